"""Train one sparse autoencoder per collected hook point, streaming shards from disk.

Memory stays bounded by one shard plus the shuffle buffer, whatever the number of shards. Reports
reconstruction MSE, fraction of variance explained (FVE), L0 and dead latents, on a final
streamed pass over the data; saves weights, config, metrics and a training-curve PNG per layer.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm import tqdm

from mlux.atomic import PathLike, atomic_write_json
from mlux.layers import expand_layer_specs

from .plots import plot_training_curve
from .run_config import SAESection
from .sae import SAEConfig, SparseAutoencoder
from .shards import Manifest
from .store import ActivationStore

__all__ = ["SAETrainResult", "evaluate_sae", "train_sae", "train_saes"]

_SCALE_ROWS = 4096  # rows used to fix the input scale and the decoder bias before training
_EVAL_ROWS = 65536  # rows of the final evaluation pass (at most)
_LOG_POINTS = 100  # training-curve points


@dataclass
class SAETrainResult:
    hook: Optional[str]
    sae: SparseAutoencoder
    metrics: dict[str, float]
    history: dict[str, list[float]]
    out_dir: Optional[Path]


def _loss(model: SparseAutoencoder, x: mx.array, l1: float) -> tuple[mx.array, ...]:
    """Loss (MSE, plus L1 on the features for ReLU SAEs), MSE, batch FVE, features."""
    x_hat, f = model(x)
    mse = mx.square(x_hat - x).mean()
    loss = (mse + l1 * mx.abs(f).sum(axis=-1).mean()) if model.config.kind == "relu" else mse
    fve = 1 - mx.square(x_hat - x).sum() / mx.square(x - x.mean(axis=0)).sum()
    return loss, mse, fve, f


def evaluate_sae(sae: SparseAutoencoder, store: ActivationStore, *, batch_size: int = 1024,
                 max_rows: Optional[int] = _EVAL_ROWS) -> dict[str, float]:
    """Streamed metrics on raw activations: MSE (scaled and raw), FVE, L0, dead latents."""
    n, sse, l0 = 0, 0.0, 0.0
    s1 = s2 = None
    fired = np.zeros(sae.config.num_latents, dtype=np.int64)
    scale = sae.config.input_scale
    for batch in store.iter_batches(batch_size, max_rows=max_rows):
        x = mx.array(batch) * scale
        x_hat, f = sae(x)
        active = f > 0
        err, cnt, fire = mx.square(x_hat - x).sum(), active.sum(), active.sum(axis=0)
        mx.eval(err, cnt, fire)
        sse += err.item()
        l0 += cnt.item()
        fired += np.asarray(fire)
        xd = batch.astype(np.float64) * scale
        s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
        s2 = (xd**2).sum(0) if s2 is None else s2 + (xd**2).sum(0)
        n += len(batch)
    if n == 0:
        raise ValueError("no activations to evaluate")
    total_var = float((s2 - s1**2 / n).sum())
    d = sae.config.d_model
    dead = int((fired == 0).sum())
    # Constant data has no variance to explain: FVE is 1 if reconstructed exactly, else 0.
    fve = 1 - sse / total_var if total_var > 0 else float(sse == 0)
    return {"rows": n, "mse": sse / (n * d), "mse_raw": sse / (n * d) / scale**2,
            "fve": fve, "l0": l0 / n,
            "dead_latents": dead, "dead_fraction": dead / sae.config.num_latents}


def _initial_stats(store: ActivationStore, seed: int) -> tuple[float, np.ndarray]:
    """Input scale and initial decoder bias (the mean) from a shuffled sample of rows."""
    x = next(store.iter_batches(_SCALE_ROWS, shuffle_buffer=_SCALE_ROWS, seed=seed,
                                max_rows=_SCALE_ROWS)).astype(np.float64)
    mean_sq = float((x**2).sum(axis=1).mean())
    scale = math.sqrt(x.shape[1] / mean_sq) if mean_sq > 0 else 1.0
    return scale, (x.mean(axis=0) * scale).astype(np.float32)


def train_sae(store: ActivationStore, settings: Optional[SAESection] = None, *,
              hook: Optional[str] = None, model_id: Optional[str] = None,
              out_dir: Optional[PathLike] = None, progress: bool = True) -> SAETrainResult:
    """Train one SAE on the rows of `store`; with `out_dir`, save weights, JSON and curve there."""
    settings = settings or SAESection()
    d = store.dim
    num_latents = settings.num_latents or settings.expansion * d
    scale, mean = _initial_stats(store, settings.seed)
    cfg = SAEConfig(d_model=d, num_latents=num_latents, kind=settings.kind,
                    k=min(settings.k, num_latents), l1_coeff=settings.l1_coeff,
                    input_scale=scale, hook=hook, position=store.key, model_id=model_id)
    sae = SparseAutoencoder(cfg, seed=settings.seed)
    sae.b_dec = mx.array(mean)
    opt = optim.Adam(learning_rate=settings.learning_rate)
    loss_and_grad = nn.value_and_grad(sae, lambda m, x: _loss(m, x, settings.l1_coeff))
    state = [sae.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array) -> tuple[mx.array, ...]:
        (loss, mse, fve, f), grads = loss_and_grad(sae, x)
        opt.update(sae, grads)
        sae.normalize_decoder()
        active = f > 0
        return loss, mse, fve, active.sum(axis=-1).mean(), active.any(axis=0)

    rows = store.num_rows
    total = settings.epochs * math.ceil(rows / settings.batch_size)
    total = min(total, settings.max_steps) if settings.max_steps else total
    log_every = max(1, total // _LOG_POINTS)
    history: dict[str, list[float]] = {k: [] for k in ("step", "loss", "mse", "fve", "l0",
                                                       "dead_fraction")}
    window = mx.zeros((num_latents,), dtype=mx.bool_)
    sums = np.zeros(4)
    batches = store.iter_batches(settings.batch_size, shuffle_buffer=settings.shuffle_buffer,
                                 seed=settings.seed, epochs=settings.epochs,
                                 max_rows=total * settings.batch_size)
    i = 0
    with tqdm(total=total, desc=f"train-sae {hook or ''}".strip(), disable=not progress,
              file=sys.stderr) as bar:
        for i, batch in enumerate(batches, 1):
            loss, mse, fve, l0, fired = step(mx.array(batch) * scale)
            window = window | fired
            mx.eval(loss, mse, fve, l0, window)
            sums += [loss.item(), mse.item(), fve.item(), l0.item()]
            if i % log_every == 0 or i == total:
                n = log_every if i % log_every == 0 else i % log_every
                for k, v in zip(("loss", "mse", "fve", "l0"), sums / n, strict=True):
                    history[k].append(float(v))
                history["step"].append(i)
                history["dead_fraction"].append(1 - window.sum().item() / num_latents)
                window, sums = mx.zeros_like(window), np.zeros(4)
                bar.set_postfix(mse=f"{history['mse'][-1]:.4f}", l0=f"{history['l0'][-1]:.1f}")
            bar.update(1)
    metrics = {**evaluate_sae(sae, store), "steps": i}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        sae.save(out, extra={"metrics": metrics, "history": history,
                             "training": {k: getattr(settings, k) for k in (
                                 "learning_rate", "batch_size", "epochs", "max_steps",
                                 "shuffle_buffer", "seed")}})
        plot_training_curve(history, out / "training_curve.png",
                            title=f"SAE {hook or ''} ({cfg.kind}, {num_latents} latents)")
    return SAETrainResult(hook, sae, metrics, history, out)


def train_saes(result_dir: PathLike, settings: Optional[SAESection] = None, *,
               out_dir: Optional[PathLike] = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict[str, SAETrainResult]:
    """One SAE per collected hook point (or `settings.hook_points`), saved under
    `out_dir` (default `<result_dir>/sae/<position>`)/<hook>, plus a `summary.json`."""
    settings = settings or SAESection()
    manifest = Manifest.load(Path(result_dir))
    hooks = manifest.hook_points
    if settings.hook_points is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wanted = expand_layer_specs(settings.hook_points, manifest.data["model"]["num_layers"])
        missing = [h for h in wanted if h not in hooks]
        if missing:
            raise ValueError(f"sae.hook_points {missing} were not collected; collected: "
                             f"{', '.join(hooks)}")
        hooks = wanted
    out = Path(out_dir) if out_dir else Path(result_dir) / "sae" / settings.position
    results = {}
    for h in hooks:
        store = ActivationStore(manifest.shard_paths(h, settings.position), settings.position)
        r = train_sae(store, settings, hook=h, model_id=manifest.model_id, out_dir=out / h,
                      progress=progress)
        results[h] = r
        m = r.metrics
        echo(f"{h:<16} mse {m['mse']:.4f}  fve {m['fve']:.3f}  L0 {m['l0']:.1f}  "
             f"dead {m['dead_latents']}/{r.sae.config.num_latents}")
    atomic_write_json(out / "summary.json", {h: r.metrics for h, r in results.items()})
    return results
