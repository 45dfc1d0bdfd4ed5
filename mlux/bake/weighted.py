"""A weighted ablation baked exactly: what a `mlux search --mode ablate` trial hooks.

The search projects its direction `u` out of block i's attention and MLP outputs with the
trial's per-layer weight w_i (`mlux.steering.weighted_ablation_hooks`: x - w_i (x.u) u) and
leaves the embeddings alone. The bake edits the same writers the same way: each output
projection of block i becomes W - w_i u (u^T W) (its bias b - w_i (b.u) u), blocks of weight 0
and the embeddings are untouched (so a tied LM head stays tied). The stream keeps part of the
direction, so the check is not "none of it is left" but the logits: the edited weights, loaded
as `mlx_lm.load` would, against the original run with the weighted hooks (fp32: relative error
below 1e-4). A quantized matrix is requantized with the rounding chosen to keep the float
edit's component along `u` (`rounding`); the logit error is then reported with the unedited
model's for scale, and a matrix whose rounding left more than half of what it should remove is
refused.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import mlx.core as mx

from ..vectors import SteeringVector
from .checks import checked, load_baked, measure_weighted, refusal
from .edits import MatrixEdit, ablate_weights, requant_summary
from .writers import Writers

__all__ = ["bake_weighted", "checked_weights", "search_weights"]

_QUANTIZED_LIMIT = 0.5  # of what a matrix's edit removes, left by the rounding (as full bakes)


def search_weights(vec: SteeringVector) -> Optional[dict[int, float]]:
    """The per-layer weights of a picked `mlux search --mode ablate` trial (metadata
    `search.layer_weights`), None for any other vector; raises ValueError for a trial whose
    window is not "all" (baked weights act at every position)."""
    search = (vec.metadata or {}).get("search")
    if not isinstance(search, dict) or search.get("mode") != "ablate" or \
            not isinstance(search.get("layer_weights"), dict):
        return None
    window = search.get("window", "all")
    if window != "all":
        raise ValueError(f"search trial {search.get('trial')} ablates in the window "
                         f"{window!r} only, and baked weights act at every position: only a "
                         "window 'all' trial bakes exactly (search with --windows all, or "
                         "ablate at run time with mlux's hooks)")
    return {int(k): float(v) for k, v in search["layer_weights"].items()}


def checked_weights(layer_weights: Mapping[Any, Any], num_layers: int) -> dict[int, float]:
    """`{layer: weight}` with negative layers counted from the end, each weight finite;
    layers of weight 0 left out. Raises ValueError naming a bad entry."""
    out: dict[int, float] = {}
    for key, value in layer_weights.items():
        layer = int(key)
        layer = layer + num_layers if layer < 0 else layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer weight for layer {key} out of range: the model has "
                             f"layers 0..{num_layers - 1}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ValueError(f"layer {key}'s ablation weight must be a finite number, got "
                             f"{value!r}")
        if layer in out:
            raise ValueError(f"layer {layer} is given two ablation weights")
        out[layer] = float(value)
    return {i: w for i, w in sorted(out.items()) if w != 0.0}


def bake_weighted(hooked: Any, config: dict[str, Any], weights: dict[str, mx.array],
                  writers: Writers, unit: mx.array, layer_weights: dict[int, float]
                  ) -> dict[str, Any]:
    """Edit `weights` in place (see the module), check them, and return the summary's
    entries; raises the refusal if the baked logits are not the hooked ones."""
    scales = {p: layer_weights.get(b, 0.0)
              for p, b in zip(writers.outputs, writers.output_blocks, strict=True)}
    edits = ablate_weights(weights, config, unit, [], [p for p, w in scales.items() if w],
                           scales)
    quantized = {k: e for k, e in edits.items() if e is not None}
    error = checked(hooked, "ablation", lambda: measure_weighted(
        hooked, load_baked(config, weights, hooked), unit, layer_weights))
    why = _inexact(error, quantized, hooked.dtype == mx.float32)
    if why is not None:
        raise refusal(hooked, "ablation", why)
    summary: dict[str, Any] = {"layer_weights": {str(i): w for i, w in layer_weights.items()},
                               "edited": sorted(edits), "logit_error": error,
                               "requantization": requant_summary(quantized)}
    if quantized:  # the requantisation noise, next to what the edit itself moves
        summary["unedited_logit_error"] = measure_weighted(hooked, hooked, unit, layer_weights)
    return summary


def _inexact(error: float, quantized: dict[str, MatrixEdit], fp32: bool) -> Optional[str]:
    """Why the baked weights do not reproduce the hooks, or None."""
    if not math.isfinite(error):
        return "the logits of the original run with the weighted ablation hooks are not finite"
    if quantized:
        worst = max(quantized, key=lambda k: quantized[k].remaining)
        if quantized[worst].remaining > _QUANTIZED_LIMIT:
            return (f"requantizing {worst} left {quantized[worst].remaining:.3g} of the "
                    f"direction's component the edit removes (limit {_QUANTIZED_LIMIT})")
        return None
    limit = 1e-4 if fp32 else 2e-2
    if error > limit:
        return (f"the baked logits differ from the original run with the weighted ablation "
                f"hooks by {error:.3g} (limit {limit}): mlux has not found every residual "
                "writer of this architecture")
    return None
