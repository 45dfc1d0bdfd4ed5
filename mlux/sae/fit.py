"""Train a sparse autoencoder on rows streamed from shards on disk.

Memory stays bounded by one shard plus the shuffle buffer, whatever the number of shards. Reports
reconstruction MSE, fraction of variance explained (FVE), L0 and dead latents on a uniform
(seeded) sample of the rows (and, given a `splice`, CE loss and KL with the SAE spliced in);
saves a SAELens folder, mlux's record and a training-curve PNG into one directory, replaced as
a whole (`atomic_write_dir`). Warns (`FewStepsWarning`, saying what to
change) when the data and settings make fewer than ~200 optimizer steps.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm import tqdm

from mlux.atomic import PathLike, atomic_write_dir
from mlux.collect.plots import plot_training_curve
from mlux.collect.run_config import SAESection
from mlux.collect.store import ActivationStore

from .config import SAEConfig, to_saelens_hook
from .metrics import evaluate_sae
from .model import SparseAutoencoder

__all__ = ["ARCHITECTURE_OF_KIND", "MIN_STEPS", "FewStepsWarning", "SAETrainResult",
           "few_steps_message", "latents_for", "train_sae", "training_settings"]

ARCHITECTURE_OF_KIND = {"topk": "topk", "relu": "standard"}  # sae.kind -> SAELens architecture

_SCALE_ROWS = 4096  # rows used to fix the input scale and the decoder bias before training
_LOG_POINTS = 100  # training-curve points
MIN_STEPS = 200  # fewer optimizer steps than this rarely train an SAE: warn


class FewStepsWarning(UserWarning):
    """The data set and settings give too few optimizer steps for an SAE to train."""


@dataclass
class SAETrainResult:
    hook: Optional[str]
    sae: SparseAutoencoder
    metrics: dict[str, float]
    history: dict[str, list[float]]
    out_dir: Optional[Path]


def _loss(model: SparseAutoencoder, x: mx.array, l1: float) -> tuple[mx.array, ...]:
    """Loss (MSE, plus L1 on the features for ReLU SAEs), MSE, batch FVE, features."""
    x_hat, f = model.forward_normalized(x)
    mse = mx.square(x_hat - x).mean()
    loss = (mse + l1 * mx.abs(f).sum(axis=-1).mean()) if model.config.architecture == "standard" \
        else mse
    var = mx.square(x - x.mean(axis=0)).sum()  # 0 for a one-row batch: no FVE to report
    fve = mx.where(var > 0, 1 - mx.square(x_hat - x).sum() / mx.maximum(var, 1e-30), 0.0)
    return loss, mse, fve, f


def training_settings(settings: SAESection) -> dict[str, Any]:
    """The settings that shape a trained SAE (which hook points to train does not)."""
    return {k: v for k, v in asdict(settings).items() if k != "hook_points"}


def latents_for(settings: SAESection, d_model: int) -> int:
    """The number of latents `settings` give at width `d_model`; ValueError if `k` exceeds it."""
    n = settings.num_latents or settings.expansion * d_model
    if settings.kind == "topk" and settings.k > n:
        raise ValueError(f"sae.k ({settings.k}) must be at most the number of latents ({n}"
                         + ("" if settings.num_latents else
                            f" = expansion {settings.expansion} x hidden {d_model}") + ")")
    return n


def few_steps_message(rows: int, settings: SAESection) -> Optional[str]:
    """Why `rows` rows under `settings` make too few optimizer steps and what to change, or None."""
    per_epoch = math.ceil(rows / settings.batch_size)
    total = settings.epochs * per_epoch
    total = min(total, settings.max_steps) if settings.max_steps else total
    if total >= MIN_STEPS:
        return None
    if settings.max_steps and settings.max_steps < MIN_STEPS:
        hint = f"raise sae.max_steps (now {settings.max_steps}) to at least {MIN_STEPS}"
    else:
        batch = min(settings.batch_size, 2 ** int(math.log2(max(1, rows // 4))))
        epochs = math.ceil(MIN_STEPS / math.ceil(rows / batch))
        hint = (f"set sae.batch_size to {batch} and sae.epochs to {epochs} (train-sae "
                f"--batch-size {batch} --epochs {epochs})")
    return (f"only {total} optimizer steps ({rows} rows / batch_size {settings.batch_size} = "
            f"{per_epoch} per epoch x {settings.epochs} epochs); an SAE needs ~{MIN_STEPS}: "
            f"{hint}, or collect more prompts")


def _initial_stats(store: ActivationStore, seed: int) -> tuple[float, np.ndarray]:
    """Input scale and initial decoder bias (the mean) from a shuffled sample of rows."""
    x = next(store.iter_batches(_SCALE_ROWS, shuffle_buffer=_SCALE_ROWS, seed=seed,
                                max_rows=_SCALE_ROWS)).astype(np.float64)
    mean_sq = float((x**2).sum(axis=1).mean())
    scale = math.sqrt(x.shape[1] / mean_sq) if mean_sq > 0 else 1.0
    return scale, (x.mean(axis=0) * scale).astype(np.float32)


def train_sae(store: ActivationStore, settings: Optional[SAESection] = None, *,
              hook: Optional[str] = None, model_id: Optional[str] = None,
              out_dir: Optional[PathLike] = None, progress: bool = True,
              extra: Optional[dict[str, Any]] = None,
              splice: Optional[Callable[[SparseAutoencoder], dict[str, float]]] = None
              ) -> SAETrainResult:
    """Train one SAE on the rows of `store`; with `out_dir`, replace that directory with a
    SAELens folder plus `mlux.json` (metrics, history, settings, `extra`) and the curve.
    `splice(sae)` adds metrics measured with the SAE spliced into the model."""
    settings = settings or SAESection()
    d = store.dim
    num_latents = latents_for(settings, d)
    rows = store.num_rows
    message = few_steps_message(rows, settings)
    if message:
        warnings.warn(f"SAE{' ' + hook if hook else ''}: {message}",
                      FewStepsWarning, stacklevel=2)
    scale, mean = _initial_stats(store, settings.seed)
    # Trained on inputs scaled to E||x||^2 = d (one setting suits every layer), then folded.
    cfg = SAEConfig(d_in=d, d_sae=num_latents, architecture=ARCHITECTURE_OF_KIND[settings.kind],
                    k=settings.k, normalize_activations="expected_average_only_in",
                    norm_scaling_factor=scale, hook_name=to_saelens_hook(hook) if hook else None,
                    model_name=model_id, position=store.key,
                    activation_norm=math.sqrt(d) / scale)
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
    sae.fold_scaling()  # saved and used on raw activations from here on
    metrics = {**evaluate_sae(sae, store, seed=settings.seed), "steps": i,
               **(splice(sae) if splice else {})}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"metrics": metrics, "history": history,
                  "training": training_settings(settings), **(extra or {})}

        def write(tmp: Path) -> None:
            sae.save(tmp, extra=record)
            plot_training_curve(history, tmp / "training_curve.png", title=(
                f"SAE {hook or ''} ({cfg.architecture}, {num_latents} latents)"))

        atomic_write_dir(out, write)
    return SAETrainResult(hook, sae, metrics, history, out)
