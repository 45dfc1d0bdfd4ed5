"""Choose the rounding of a requantised matrix so that a direction stays projected out.

Requantising a matrix from which `u` was projected rounds every element to its group's grid
independently, and the rounding errors put back a component along `u` of about 0.3 grid steps
per column (0.09-0.22x of the original on 4-bit models). Each element can round to either
neighbour of its value: moving one to its other neighbour changes its column's component by
`u_d * s` (s: its group's grid step) and adds `s^2 |1 - 2f|` of squared error (f: where the
value sits between the two). Per column, the moves that remove the most component per error
added are taken at once (up to the component to remove), then a few single best moves settle
the rest. Scales and biases are kept, so the matrix stays within one grid step of the
float edit and its component along `u` falls to the size of the smallest move.
"""

from __future__ import annotations

import mlx.core as mx

__all__ = ["PACKED_BITS", "expand", "pack", "round_out", "unpack"]

PACKED_BITS = (2, 4, 8)  # widths mlx packs as whole fields of a uint32 (others are not edited)
_BATCH = 128  # candidate moves per column and batch: more than a 4096-wide column needs
_BATCHES = 2  # batch rounds (measured: a second one rarely takes a move); each stops early
_SETTLE = 4  # single-move rounds after the batches: 3e-3 -> 7e-5 of the component left
_CHUNK = 1 << 22  # elements per slice of rows (rows are independent): bounds the memory


def unpack(packed: mx.array, bits: int) -> mx.array:
    """The integer levels `(..., R, C)` of an affine-quantized weight `(..., R, C*bits/32)`."""
    per = 32 // bits
    shifts = mx.arange(per, dtype=mx.uint32) * bits
    q = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # (..., R, W, per)
    return q.reshape(*packed.shape[:-1], packed.shape[-1] * per).astype(mx.int32)


def pack(levels: mx.array, bits: int) -> mx.array:
    """Inverse of `unpack`: disjoint bit fields, so their sum is their bitwise or."""
    per = 32 // bits
    q = levels.astype(mx.uint32).reshape(*levels.shape[:-1], -1, per)
    return (q << (mx.arange(per, dtype=mx.uint32) * bits)).sum(axis=-1).astype(mx.uint32)


def expand(per_group: mx.array, group_size: int) -> mx.array:
    """A group's scale or bias `(..., R, C/group_size)` repeated to every element `(..., R, C)`."""
    return mx.repeat(per_group.astype(mx.float32), group_size, axis=-1)


def round_out(levels: mx.array, step: mx.array, offset: mx.array, target: mx.array,
              unit: mx.array, bits: int, keep: bool = False) -> mx.array:
    """New levels for a weight `(..., C, D)` = `step * levels + offset` (both `(..., C, D)`,
    the group's scale and bias per element) rounding `target`, whose rows' components along
    `unit` (D,) are as close to zero as moves of one grid step allow (`keep`: as close to
    `target`'s own, for a partial ablation). (The last axis is the stream's, whichever axis
    the weight is quantized along: contiguous rows sort fast.)"""
    height = max(1, _CHUNK * levels.shape[-2] // max(levels.size, 1))  # rows per slice
    parts = [_round_rows(levels[..., i:i + height, :], step[..., i:i + height, :],
                         offset[..., i:i + height, :], target[..., i:i + height, :], unit, bits,
                         keep)
             for i in range(0, levels.shape[-2], height)]
    return mx.concatenate(parts, axis=-2)


def _moves(levels: mx.array, step: mx.array, err: mx.array, comp: mx.array, unit: mx.array,
           top: int) -> tuple[mx.array, mx.array, mx.array]:
    """Per element: the move towards a zero component (-1, 0 or +1), the component it removes
    (> 0 where allowed) and the squared error it adds."""
    effect = unit * step  # (..., C, D) component change per +1 level
    move = -mx.sign(comp[..., None] * effect)
    ok = (move != 0) & (levels + move >= 0) & (levels + move <= top)
    ok = ok & (mx.abs(err + step * move) <= mx.abs(step))  # the other neighbour only
    gain = mx.where(ok, mx.abs(effect), 0.0)
    cost = mx.maximum(step * step + 2 * err * step * move, 1e-12 * step * step)
    return move, gain, cost


def _round_rows(levels: mx.array, step: mx.array, offset: mx.array, target: mx.array,
                unit: mx.array, bits: int, keep: bool) -> mx.array:
    top = (1 << bits) - 1
    err = step * levels + offset - target  # (..., C, D) rounding error
    comp = err @ unit if keep else (err + target) @ unit  # (..., C): the component to remove
    # Batches: per row, the best moves by component removed per error added (among the
    # `_BATCH` best, found by a partial sort), as many as bring the component closest to zero.
    for _ in range(_BATCHES):
        move, gain, cost = _moves(levels, step, err, comp, unit, top)
        k = min(_BATCH, levels.shape[-1])
        score = gain / cost
        idx = mx.argpartition(-score, k - 1, axis=-1)[..., :k]  # (..., C, k) unordered
        idx = mx.take_along_axis(idx, mx.argsort(-mx.take_along_axis(score, idx, axis=-1),
                                                 axis=-1), axis=-1)
        g = mx.take_along_axis(gain, idx, axis=-1)
        take = (g > 0) & (mx.cumsum(g, axis=-1) - g / 2 < mx.abs(comp)[..., None])
        if not bool(take.any()):
            break
        chosen = mx.where(take, mx.take_along_axis(move, idx, axis=-1), 0)
        delta = mx.put_along_axis(mx.zeros_like(move), idx, chosen, axis=-1)
        levels, err, comp = _apply(levels, step, err, comp, unit, delta)
    for _ in range(_SETTLE):  # then single best moves, per row, while one helps
        move, gain, cost = _moves(levels, step, err, comp, unit, top)
        after = mx.abs(mx.abs(comp)[..., None] - gain)
        helps = (gain > 0) & (after < mx.abs(comp)[..., None])
        score = mx.where(helps, (mx.abs(comp)[..., None] - after) / cost, -1.0)
        best = mx.argmax(score, axis=-1, keepdims=True)  # (..., C, 1)
        some = mx.take_along_axis(score, best, axis=-1) > 0
        if not bool(some.any()):
            break
        chosen = mx.where(some, mx.take_along_axis(move, best, axis=-1), 0)
        delta = mx.put_along_axis(mx.zeros_like(move), best, chosen, axis=-1)
        levels, err, comp = _apply(levels, step, err, comp, unit, delta)
    return levels


def _apply(levels: mx.array, step: mx.array, err: mx.array, comp: mx.array, unit: mx.array,
           delta: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    levels = levels + delta.astype(levels.dtype)
    err = err + step * delta
    comp = comp + (step * delta) @ unit
    mx.eval(levels, err, comp)
    return levels, err, comp
