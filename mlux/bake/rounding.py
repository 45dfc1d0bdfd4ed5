"""Choose the rounding of a requantised matrix so that a direction stays projected out.

Requantising a matrix from which `u` was projected rounds every element to its group's grid
independently, and the rounding errors put back a component along `u` of about 0.3 grid steps
per column (0.1-0.25x of the original on 4-bit models). Each element can round to either
neighbour of its value; moving one by a grid step `s` changes its column's component by
`u_d * s`. A greedy pass per column repeatedly takes the one step that brings the component
closest to zero, keeping the scales and biases, so the dequantized matrix stays within about
one grid step of the float edit and its component along `u` falls to the smallest step left.
"""

from __future__ import annotations

import mlx.core as mx

__all__ = ["PACKED_BITS", "expand", "pack", "round_out", "unpack"]

PACKED_BITS = (2, 4, 8)  # widths mlx packs as whole fields of a uint32 (others are not edited)
_STEPS = 64  # an upper bound; the loop stops when no column can improve


def unpack(packed: mx.array, bits: int) -> mx.array:
    """The integer levels `(..., R, C)` of an affine-quantized weight `(..., R, C*bits/32)`."""
    per = 32 // bits
    shifts = mx.arange(per, dtype=mx.uint32) * bits
    q = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # (..., R, W, per)
    return q.reshape(*packed.shape[:-1], packed.shape[-1] * per).astype(mx.int32)


def expand(per_group: mx.array, group_size: int) -> mx.array:
    """A group's scale or bias `(..., R, C/group_size)` repeated to every element `(..., R, C)`."""
    return mx.repeat(per_group.astype(mx.float32), group_size, axis=-1)


def pack(levels: mx.array, bits: int) -> mx.array:
    """Inverse of `unpack`: disjoint bit fields, so their sum is their bitwise or."""
    per = 32 // bits
    q = levels.astype(mx.uint32).reshape(*levels.shape[:-1], -1, per)
    return (q << (mx.arange(per, dtype=mx.uint32) * bits)).sum(axis=-1).astype(mx.uint32)


def round_out(levels: mx.array, step: mx.array, offset: mx.array, target: mx.array,
              unit: mx.array, bits: int) -> mx.array:
    """New levels for a weight `(..., D, C)` = `step * levels + offset` (both `(..., D, C)`,
    the group's scale and bias per element) rounding `target` (..., D, C), whose columns'
    components along `unit` (D,) are as close to zero as single grid steps allow. Each round
    takes, per column, the step that removes the most component per squared error added."""
    top = (1 << bits) - 1
    err = step * levels + offset - target  # (..., D, C) rounding error
    comp = mx.einsum("d,...dc->...c", unit, err + target)  # (..., C)
    effect = unit[:, None] * step  # change of a column's component per +1 level
    rows = mx.arange(levels.shape[-2])[:, None]
    for _ in range(_STEPS):
        move = -mx.sign(comp[..., None, :] * effect)  # (..., D, C) towards zero
        gain = mx.abs(comp)[..., None, :] - mx.abs(comp[..., None, :] + effect * move)
        cost = step * step + 2 * err * step * move  # the squared error it adds (>= 0)
        ok = (gain > 0) & (levels + move >= 0) & (levels + move <= top)
        score = mx.where(ok, gain / mx.maximum(cost, 1e-12 * step * step), -1.0)
        best = mx.argmax(score, axis=-2)  # (..., C)
        take = mx.take_along_axis(score, best[..., None, :], axis=-2)[..., 0, :] > 0
        if not bool(take.any()):
            break
        delta = mx.where((rows == best[..., None, :]) & take[..., None, :], move, 0)
        levels = levels + delta.astype(levels.dtype)
        err = err + step * delta
        comp = comp + (effect * delta).sum(axis=-2)
        mx.eval(levels, err, comp)
    return levels
