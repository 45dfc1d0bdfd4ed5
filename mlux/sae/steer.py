"""Steering by SAE feature, two ways.

- `feature_to_steering_vector`: the feature's decoder row as a one-layer `SteeringVector`, its
  norm relative to the layer's mean activation norm.
- Clamping (`clamp_hook`, and `Steering(sae_clamp=(sae, feature, value))` on the one decoder):
  encode the activation, set feature f to `value`, and add `decode(clamped) - decode(original)`.
  The SAE's reconstruction error stays in the stream, so a clamp to the feature's own value
  changes nothing. The decoder is affine, so the added term is `(value - f) * W_dec[f]` (through
  the SAE's output normalisation): one row, not a full decode.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import mlx.core as mx

from mlux.hooks import Hook, HookContext
from mlux.positions import Positions, resolve_positions
from mlux.vectors import SteeringVector

__all__ = ["Clamp", "check_feature", "clamp_hook", "feature_to_steering_vector", "row_clamp_hook"]

Clamp = Optional[tuple[int, Optional[float]]]  # (feature, value; None = its own value) or none


def check_feature(sae: Any, feature: Any, value: Any = 0.0) -> None:
    """ValueError unless `feature` indexes the SAE and `value` is a finite number (or None)."""
    n = sae.config.d_sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < n:
        raise ValueError(f"feature must be an int in 0..{n - 1}, got {feature!r}")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise ValueError(f"clamp value must be a finite number, got {value!r}")


def feature_to_steering_vector(sae: Any, feature: int, *, layer: Optional[int] = None,
                               scale: float = 0.5, relative: bool = True) -> SteeringVector:
    """The feature's decoder direction as a one-layer steering vector.

    By default (`relative=True`) the vector's norm is `scale` times the root-mean-square norm of
    the activations the SAE was trained on (`config.activation_norm`), so the default 0.5 steers
    on any model. `relative=False`: the norm is `scale`. `layer` defaults to the SAE's hook
    point; vectors are added at `residuals_{layer}`.
    """
    check_feature(sae, feature)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    hook = sae.config.hook
    if layer is None:
        if hook is None:
            raise ValueError(f"this SAE's hook_name {sae.config.hook_name!r} names no mlux hook "
                             "point; pass layer=")
        layer = int(hook.rsplit("_", 1)[1])
    reference = sae.config.activation_norm if relative else 1.0
    if reference is None:
        raise ValueError("this SAE records no activation norm (it was not trained by mlux): "
                         "pass relative=False and an absolute scale")
    norm = scale * reference
    row = sae.W_dec[feature]
    direction = row / mx.linalg.norm(row) * norm
    return SteeringVector({layer: direction}, model_id=sae.config.model_name,
                          method="sae_feature",
                          metadata={"sae_hook": hook, "feature": feature, "scale": scale,
                                    "relative": relative, "norm": norm,
                                    "sae_architecture": sae.config.architecture,
                                    "position": sae.config.position})


def row_clamp_hook(sae: Any, clamps: Sequence[Clamp], starts: Sequence[float],
                   ends: Sequence[float]) -> Hook:
    """Row b's feature `clamps[b][0]` set to `clamps[b][1]` at its absolute positions in
    `[starts[b], ends[b])`; rows whose clamp is None are left alone."""
    b = len(clamps)
    if not len(starts) == len(ends) == b:
        raise ValueError(f"{b} clamps need {b} starts and ends; got {len(starts)}, {len(ends)}")
    for c in clamps:
        if c is not None:
            check_feature(sae, c[0], c[1])
    any_on = any(c is not None for c in clamps)
    feats = mx.array([clamps[i][0] if clamps[i] else 0 for i in range(b)])  # type: ignore[index]
    own = mx.array([c is not None and c[1] is None for c in clamps])[:, None]  # (B, 1)
    values = mx.array([float(c[1]) if c is not None and c[1] is not None else 0.0
                       for c in clamps])[:, None]  # (B, 1)
    lo = mx.array([float(s) for s in starts])[:, None]
    hi = mx.array([min(float(e), 2.0**31) for e in ends])[:, None]
    on = mx.array([c is not None for c in clamps])[:, None]  # (B, 1)
    rows_dec = mx.stack([sae.decoder_row(int(i)) for i in feats.tolist()])  # (B, D)

    def hook(x: mx.array, ctx: HookContext) -> Optional[mx.array]:
        if not any_on:
            return None
        if x.shape[0] != b:
            raise ValueError(f"SAE clamp for {b} rows; {ctx.name} has batch {x.shape[0]}")
        x32 = x.astype(mx.float32)  # (B, T, D)
        f = sae.encode(x32)  # (B, T, S)
        current = mx.take_along_axis(f, feats[:, None, None], axis=-1)[..., 0]  # (B, T)
        target = mx.where(own, current, values)
        pos = ctx.positions()  # (1|B, T)
        inside = on & (pos >= lo) & (pos < hi)  # (B, T)
        change = mx.where(inside, target - current, 0.0)  # (B, T)
        y = change[..., None] * rows_dec[:, None, :]  # (B, T, D)
        return x + sae.output_delta(y, x32).astype(x.dtype)

    return hook


def clamp_hook(sae: Any, feature: int, value: Optional[float], *,
               positions: Positions = "all", prompt_length: Optional[int] = None) -> Hook:
    """A hook for the SAE's hook point that sets `feature` to `value` (None: its own value, a
    no-op) and adds `decode(clamped) - decode(original)`, keeping the reconstruction error."""
    check_feature(sae, feature, value)
    start, end = resolve_positions(positions, prompt_length)
    hooks: dict[int, Hook] = {}  # one per batch size seen

    def hook(x: mx.array, ctx: HookContext) -> Optional[mx.array]:
        b = x.shape[0]
        if b not in hooks:
            hooks[b] = row_clamp_hook(sae, [(feature, value)] * b, [start] * b, [end] * b)
        return hooks[b](x, ctx)

    return hook
