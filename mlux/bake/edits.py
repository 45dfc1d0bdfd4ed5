"""The weight edits behind `mlux.bake`: a direction projected out of the matrices that write into
the residual stream (`writers.find_writers` says which), and how a quantized matrix is edited
(dequantize, edit in float32, requantize with its own bits and group size, then re-project: the
rounding of 4-bit requantisation puts part of the direction back, so the edit is corrected
against what the quantized weight actually computes, a few rounds, keeping the best).

Everything here works on a flat `{name: array}` dict of one model's parameters (the names
`mlx_lm.load` reads back) and a raw config dict; nothing is loaded or written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import mlx.core as mx

__all__ = ["REPROJECT_ROUNDS", "MatrixEdit", "ablate_weights"]

# Measured on the tiny 4-bit models (experiments/bake_requant.py): the component left falls
# for about 4-6 rounds and then oscillates, so 8 rounds keeping the best is enough.
REPROJECT_ROUNDS = 8


@dataclass
class MatrixEdit:
    """What requantising one edited matrix cost: the relative Frobenius error and max abs error
    of the requantised weight against the float edit, and the direction's component left in
    it relative to the original matrix's (`remaining`: 0 = removed, 1 = untouched)."""

    relative: float
    max_abs: float
    remaining: float
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quant_params(config: dict[str, Any], prefix: str) -> tuple[int, int, str]:
    q = config.get("quantization") or config.get("quantization_config") or {}
    own = q.get(prefix)
    q = own if isinstance(own, dict) else q
    return int(q.get("group_size", 64)), int(q.get("bits", 4)), str(q.get("mode", "affine"))


def _norm(x: mx.array) -> float:
    return float(mx.linalg.norm(x.reshape(-1).astype(mx.float32)).item())


def _edit_matrix(weights: dict[str, mx.array], prefix: str, config: dict[str, Any],
                 edit: Callable[[mx.array], mx.array],
                 component: Callable[[mx.array], mx.array]) -> Optional[MatrixEdit]:
    """Replace `prefix.weight` by `edit(weight)` computed in float32. A quantized weight is
    dequantized first, requantized after with its own group size and bits, and re-projected:
    `component(w)` is the direction's part of `w`; each round subtracts what the last
    requantisation left of it from the float target. Returns the cost (None: not quantized)."""
    w = weights[f"{prefix}.weight"]
    scales = weights.get(f"{prefix}.scales")
    if scales is None:
        weights[f"{prefix}.weight"] = edit(w.astype(mx.float32)).astype(w.dtype)
        return None
    group_size, bits, mode = _quant_params(config, prefix)
    if mode != "affine":
        raise ValueError(f"{prefix} is quantized in mode {mode!r}; bake edits affine only")
    biases = weights[f"{prefix}.biases"]

    def quantize(x: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        qw, qs, qb = mx.quantize(x, group_size=group_size, bits=bits)
        qs, qb = qs.astype(scales.dtype), qb.astype(biases.dtype)
        back = mx.dequantize(qw, qs, qb, group_size=group_size, bits=bits).astype(mx.float32)
        return qw, qs, qb, back

    dense = mx.dequantize(w, scales, biases, group_size=group_size, bits=bits)
    edited = edit(dense.astype(mx.float32))
    before = max(_norm(component(dense.astype(mx.float32))), 1e-30)
    target, best, best_left, rounds = edited, None, float("inf"), 0
    for r in range(REPROJECT_ROUNDS):
        qw, qs, qb, back = quantize(target)
        left = _norm(component(back))
        if left < best_left:
            best, best_left, rounds = (qw, qs, qb, back), left, r
        target = target - component(back)  # push the rounding's share of u back out
    qw, qs, qb, back = best  # type: ignore[misc]
    weights[f"{prefix}.weight"], weights[f"{prefix}.scales"] = qw, qs
    weights[f"{prefix}.biases"] = qb
    diff = back - edited
    return MatrixEdit(relative=_norm(diff) / max(_norm(edited), 1e-30),
                      max_abs=float(mx.abs(diff).max().item()), remaining=best_left / before,
                      rounds=rounds)


def ablate_weights(weights: dict[str, mx.array], config: dict[str, Any], unit: mx.array,
                   embeddings: list[str], outputs: list[str]) -> dict[str, Optional[MatrixEdit]]:
    """Project the unit vector `unit` out of every residual write, in place: the embeddings
    (rows: E - (E u) u^T) and the output projections (W - u (u^T W); a fused expert matrix
    `(E, D, I)` edits every expert), with their biases (b - (b.u) u). Returns {module path:
    requantisation cost or None (not quantized)}."""
    u = unit.astype(mx.float32)

    def row_part(e: mx.array) -> mx.array:  # (V, D): each row is a vector in the stream
        return (e @ u)[:, None] * u[None, :]

    def col_part(w: mx.array) -> mx.array:  # (..., D, I): output dimension second to last
        return u[:, None] * mx.einsum("d,...di->...i", u, w)[..., None, :]

    report: dict[str, Optional[MatrixEdit]] = {}
    for prefixes, part in ((embeddings, row_part), (outputs, col_part)):
        for p in prefixes:
            report[p] = _edit_matrix(weights, p, config, lambda w, f=part: w - f(w), part)
            mx.eval(weights[f"{p}.weight"])
    for p in outputs:
        if (b := weights.get(f"{p}.bias")) is not None:  # (..., D), per expert if fused
            bf = b.astype(mx.float32)
            weights[f"{p}.bias"] = (bf - (bf @ u)[..., None] * u).astype(b.dtype)
    mx.eval(weights)
    return report
