"""SAE quality as SAELens reports it.

- On stored activations (`evaluate_sae`): MSE, fraction of variance explained (FVE), L0 and dead
  latents, over every row or a uniform seeded sample.
- With the SAE spliced into the model (`spliced_metrics`): next-token cross-entropy of the
  clean model, with the hook point replaced by the SAE's reconstruction, and with it
  zero-ablated; CE-loss recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean), and the KL
  of the spliced (and ablated) next-token distributions from the clean ones, per token.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import mlx.core as mx
import numpy as np

from mlux.collect.store import ActivationStore
from mlux.evaluation import log_softmax
from mlux.hooks import HookContext
from mlux.model import HookedModel

from .model import SparseAutoencoder

__all__ = ["evaluate_sae", "spliced_metrics"]

_EVAL_ROWS = 65536  # rows of the final evaluation pass (at most, sampled uniformly)


def evaluate_sae(sae: SparseAutoencoder, store: ActivationStore, *, batch_size: int = 1024,
                 max_rows: Optional[int] = _EVAL_ROWS, seed: int = 0) -> dict[str, float]:
    """Metrics on raw activations: MSE, normalised MSE (over E||x||^2), FVE, L0, dead latents;
    over every row, or `max_rows` drawn uniformly (seeded) across all shards and categories."""
    n, sse, l0, sq = 0, 0.0, 0.0, 0.0
    s1 = s2 = None
    fired = np.zeros(sae.config.d_sae, dtype=np.int64)
    batches = (store.iter_batches(batch_size) if max_rows is None
               else store.iter_sample(max_rows, batch_size, seed=seed))
    for batch in batches:
        x = mx.array(batch)
        f = sae.encode(x)  # (N, S)
        x_hat = sae.decode(f, x)  # (N, D)
        active = f > 0
        err, cnt, fire = mx.square(x_hat - x).sum(), active.sum(), active.sum(axis=0)
        mx.eval(err, cnt, fire)
        sse += err.item()
        l0 += cnt.item()
        fired += np.asarray(fire)
        xd = batch.astype(np.float64)
        sq += float((xd**2).sum())
        s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
        s2 = (xd**2).sum(0) if s2 is None else s2 + (xd**2).sum(0)
        n += len(batch)
    if n == 0:
        raise ValueError("no activations to evaluate")
    total_var = float((s2 - s1**2 / n).sum())
    dead = int((fired == 0).sum())
    # Constant data has no variance to explain: FVE is 1 if reconstructed exactly, else 0.
    fve = 1 - sse / total_var if total_var > 0 else float(sse == 0)
    return {"rows": n, "mse": sse / (n * sae.config.d_in),
            "mse_normalized": sse / sq if sq > 0 else 0.0, "fve": fve, "l0": l0 / n,
            "dead_latents": dead, "dead_fraction": dead / sae.config.d_sae}


def spliced_metrics(hooked: HookedModel, sae: SparseAutoencoder, prompts: Sequence[Any], *,
                    hook: Optional[str] = None, batch_size: int = 8) -> dict[str, float]:
    """CE loss and KL with the SAE's reconstruction replacing `hook` (default: the SAE's own
    hook point), against the clean and the zero-ablated model, over every next-token
    prediction of `prompts` (strings or token lists)."""
    point = hook or sae.config.hook
    if point is None:
        raise ValueError("this SAE has no mlux hook point (hook_name "
                         f"{sae.config.hook_name!r}); pass hook=")
    if point not in hooked.hook_points:
        raise ValueError(f"hook {point!r} is not a hook point of this model")
    sae.check_model(hooked.hidden_size, hooked.num_layers)
    if not prompts:
        raise ValueError("spliced metrics need at least one prompt")

    def splice(x: mx.array, ctx: HookContext) -> mx.array:
        return sae.forward(x).astype(x.dtype)  # (B, T, D): the stream is the reconstruction

    def ablate(x: mx.array, ctx: HookContext) -> mx.array:
        return mx.zeros_like(x)

    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_ablated": 0.0, "kl_sae": 0.0, "kl_ablated": 0.0}
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch = hooked.tokenize(list(prompts[start:start + batch_size]))
        tokens = batch.tokens  # (B, T), left-padded
        pads = mx.array(batch.left_padding)[:, None]
        steps = mx.arange(tokens.shape[1] - 1)[None]
        mask = (steps >= pads).astype(mx.float32)  # (B, T-1): predictions of real tokens
        targets = tokens[:, 1:, None]
        clean = log_softmax(hooked.forward(batch)[:, :-1])  # (B, T-1, V)
        runs = {"sae": hooked.run_with_hooks(batch, [(point, splice)]),
                "ablated": hooked.run_with_hooks(batch, [(point, ablate)])}
        p_clean = mx.exp(clean)
        sums["ce_clean"] += float((-mx.take_along_axis(clean, targets, -1)[..., 0] * mask).sum())
        for name, logits in runs.items():
            lp = log_softmax(logits[:, :-1])
            sums[f"ce_{name}"] += float((-mx.take_along_axis(lp, targets, -1)[..., 0]
                                         * mask).sum())
            sums[f"kl_{name}"] += float(((p_clean * (clean - lp)).sum(-1) * mask).sum())
        count += int(mask.sum().item())
    if count == 0:
        raise ValueError("the prompts have no next-token predictions (each is one token)")
    m = {k: v / count for k, v in sums.items()}
    gap = m["ce_ablated"] - m["ce_clean"]
    return {"ce_loss_clean": m["ce_clean"], "ce_loss_with_sae": m["ce_sae"],
            "ce_loss_with_ablation": m["ce_ablated"],
            "ce_loss_recovered": (m["ce_ablated"] - m["ce_sae"]) / gap if gap else float("nan"),
            "kl_div_with_sae": m["kl_sae"], "kl_div_with_ablation": m["kl_ablated"],
            "kl_div_recovered": (1 - m["kl_sae"] / m["kl_ablated"]) if m["kl_ablated"]
            else float("nan"), "spliced_tokens": count}
