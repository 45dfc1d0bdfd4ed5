"""`mlux.bake.rounding`: the requantised levels keep an ablated direction out (issue 25.5),
checked against mlx's own quantize / dequantize."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlux.bake.edits import ablate_weights
from mlux.bake.rounding import expand, pack, round_out, unpack


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unpack_and_pack_are_mlx_s_own_layout(bits):
    w = mx.random.normal((6, 128), key=mx.random.key(0))
    qw, qs, qb = mx.quantize(w, group_size=32, bits=bits)
    levels = unpack(qw, bits)
    assert int(levels.min()) >= 0 and int(levels.max()) < 2 ** bits
    by_hand = expand(qs, 32) * levels + expand(qb, 32)
    assert mx.allclose(by_hand, mx.dequantize(qw, qs, qb, group_size=32, bits=bits), atol=1e-6)
    assert mx.array_equal(pack(levels, bits), qw)


def test_round_out_removes_the_component_within_one_grid_step():
    target = mx.random.normal((96, 256), key=mx.random.key(1))  # (rows, D): D is quantized
    unit = mx.random.normal((256,), key=mx.random.key(2))
    unit = unit / mx.linalg.norm(unit)
    target = target - (target @ unit)[:, None] * unit
    qw, qs, qb = mx.quantize(target, group_size=64, bits=4)
    step, offset = expand(qs, 64), expand(qb, 64)
    levels = round_out(unpack(qw, 4), step, offset, target, unit, 4)
    back = mx.dequantize(pack(levels, 4), qs, qb, group_size=64, bits=4)
    nearest = mx.dequantize(qw, qs, qb, group_size=64, bits=4)
    left, before = (float(mx.abs(m @ unit).max()) for m in (back, nearest))
    assert left < 0.02 * before, (left, before)
    assert bool((mx.abs(back - target) <= mx.abs(step) * (1 + 1e-4)).all())  # one step at most
    assert 0 <= int(levels.min()) and int(levels.max()) <= 15


def test_an_already_4bit_wide_matrix_keeps_the_direction_out():
    """Requantising an edited 4-bit matrix with nearest rounding snaps most values back to the
    old grid (most of the direction comes back); the chosen rounding does not."""
    rows, cols = 256, 512
    w = mx.random.normal((rows, cols), key=mx.random.key(3)) * 0.02  # (D, I): D = stream
    qw, qs, qb = mx.quantize(w, group_size=64, bits=4)
    unit = mx.random.normal((rows,), key=mx.random.key(4))
    unit = unit / mx.linalg.norm(unit)
    config = {"quantization": {"group_size": 64, "bits": 4}}
    weights = {"x.weight": qw, "x.scales": qs, "x.biases": qb}
    report = ablate_weights(weights, config, unit, [], ["x"])
    dense = mx.dequantize(qw, qs, qb, group_size=64, bits=4)
    baked = mx.dequantize(weights["x.weight"], weights["x.scales"], weights["x.biases"],
                          group_size=64, bits=4)
    left = float(mx.linalg.norm(unit @ baked) / mx.linalg.norm(unit @ dense))
    assert left < 1e-3 and abs(report["x"].remaining - left) < 1e-4
    nearest = mx.quantize(dense - unit[:, None] * (unit @ dense)[None, :], group_size=64,
                          bits=4)
    plain = mx.dequantize(*nearest, group_size=64, bits=4)
    assert float(mx.linalg.norm(unit @ plain) / mx.linalg.norm(unit @ dense)) > 0.3
