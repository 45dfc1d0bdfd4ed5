"""The weight edits behind `mlux.bake`: a direction projected out of the matrices that write into
the residual stream (`writers.find_writers` says which), and how a quantized matrix is edited
(dequantize, edit in float32, requantize with its own bits and group size, choosing each
element's rounding so the requantized matrix keeps the direction out: `rounding`).

Everything here works on a flat `{name: array}` dict of one model's parameters (the names
`mlx_lm.load` reads back) and a raw config dict; nothing is loaded or written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import mlx.core as mx

from .rounding import PACKED_BITS, expand, pack, round_out, unpack

__all__ = ["MatrixEdit", "ablate_weights", "requant_summary"]


@dataclass
class MatrixEdit:
    """What requantising one edited matrix cost: the relative Frobenius error and max abs error
    of the requantised weight against the float edit, and the direction's component left in
    it that the edit removes, relative to what it removes (`remaining`: 0 = removed, 1 =
    untouched; a full ablation removes all of the original's component)."""

    relative: float
    max_abs: float
    remaining: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def requant_summary(edits: dict[str, MatrixEdit]) -> Optional[dict[str, Any]]:
    """The requantised matrices' costs for a bake's summary (None: nothing was quantized)."""
    if not edits:
        return None
    return {"max_relative": max(e.relative for e in edits.values()),
            "max_abs": max(e.max_abs for e in edits.values()),
            "max_remaining": max(e.remaining for e in edits.values()),
            "per_matrix": {k: e.as_dict() for k, e in edits.items()}}


def _quant_params(config: dict[str, Any], prefix: str) -> tuple[int, int, str]:
    q = config.get("quantization") or config.get("quantization_config") or {}
    own = q.get(prefix)
    q = own if isinstance(own, dict) else q
    return int(q.get("group_size", 64)), int(q.get("bits", 4)), str(q.get("mode", "affine"))


def _norm(x: mx.array) -> float:
    return float(mx.linalg.norm(x.reshape(-1).astype(mx.float32)).item())


def _quantized_edit(scales: mx.array, biases: mx.array, edited: mx.array,
                    unit: mx.array, rows: bool, group_size: int, bits: int, keep: bool
                    ) -> tuple[mx.array, mx.array, mx.array]:
    """Requantize `edited` with the scales mx.quantize picks and the rounding
    `rounding.round_out` picks (`rows`: the direction lies along the quantized axis; `keep`:
    keep `edited`'s component along it, a partial ablation, rather than none)."""
    qw, qs, qb = mx.quantize(edited, group_size=group_size, bits=bits)
    qs, qb = qs.astype(scales.dtype), qb.astype(biases.dtype)
    if bits not in PACKED_BITS:
        return qw, qs, qb
    levels, step, offset = unpack(qw, bits), expand(qs, group_size), expand(qb, group_size)
    if rows:  # (V, D): each row is a vector in the stream already
        levels = round_out(levels, step, offset, edited, unit, bits, keep)
    else:  # (..., D, I): turned so that the stream's axis is last, and back
        t = lambda a: mx.swapaxes(a, -1, -2)  # noqa: E731
        levels = t(round_out(t(levels), t(step), t(offset), t(edited), unit, bits, keep))
    return pack(levels, bits), qs, qb


def _edit_matrix(weights: dict[str, mx.array], prefix: str, config: dict[str, Any],
                 unit: mx.array, rows: bool, weight: float = 1.0) -> Optional[MatrixEdit]:
    """Project `weight` times `unit`'s share out of `prefix.weight` in float32 (`rows`: each
    row is a vector in the stream, else its second-to-last axis is the stream). A quantized
    weight is dequantized, edited, and requantized with its own group size and bits and a
    rounding chosen to keep the edit's component; returns the cost then (None: not
    quantized)."""

    def part(m: mx.array) -> mx.array:  # the direction's share of m
        if rows:
            return (m @ unit)[..., None] * unit
        return unit[:, None] * mx.einsum("d,...di->...i", unit, m)[..., None, :]

    def removed(m: mx.array) -> mx.array:  # what the edit takes out of m
        return part(m) if weight == 1.0 else weight * part(m)

    w = weights[f"{prefix}.weight"]
    scales = weights.get(f"{prefix}.scales")
    if scales is None:
        wf = w.astype(mx.float32)
        weights[f"{prefix}.weight"] = (wf - removed(wf)).astype(w.dtype)
        return None
    group_size, bits, mode = _quant_params(config, prefix)
    if mode != "affine":
        raise ValueError(f"{prefix} is quantized in mode {mode!r}; bake edits affine only")
    biases = weights[f"{prefix}.biases"]
    dense = mx.dequantize(w, scales, biases, group_size=group_size, bits=bits).astype(mx.float32)
    edited = dense - removed(dense)
    qw, qs, qb = _quantized_edit(scales, biases, edited, unit, rows, group_size, bits,
                                 weight != 1.0)
    weights[f"{prefix}.weight"], weights[f"{prefix}.scales"] = qw, qs
    weights[f"{prefix}.biases"] = qb
    back = mx.dequantize(qw, qs, qb, group_size=group_size, bits=bits).astype(mx.float32)
    diff = back - edited
    return MatrixEdit(relative=_norm(diff) / max(_norm(edited), 1e-30),
                      max_abs=float(mx.abs(diff).max().item()),
                      remaining=_norm(part(back) - (1.0 - weight) * part(dense))
                      / max(_norm(removed(dense)), 1e-30))


def ablate_weights(weights: dict[str, mx.array], config: dict[str, Any], unit: mx.array,
                   embeddings: list[str], outputs: list[str],
                   scales: Optional[Mapping[str, float]] = None
                   ) -> dict[str, Optional[MatrixEdit]]:
    """Project the unit vector `unit` out of every residual write, in place: the embeddings
    (rows: E - (E u) u^T) and the output projections (W - u (u^T W); a fused expert matrix
    `(E, D, I)` edits every expert), with their biases (b - (b.u) u). `scales`: {output
    path: weight w} removes only w of the component there (W - w u (u^T W), b - w (b.u) u),
    as `create_ablation_hook(u, weight=w)` does. Returns {module path: requantisation cost or
    None (not quantized)}."""
    u = unit.astype(mx.float32)
    share = (lambda p: 1.0) if scales is None else (lambda p: float(scales[p]))  # noqa: E731
    report: dict[str, Optional[MatrixEdit]] = {}
    for prefixes, rows in ((embeddings, True), (outputs, False)):
        for p in prefixes:
            report[p] = _edit_matrix(weights, p, config, u, rows, 1.0 if rows else share(p))
            mx.eval(weights[f"{p}.weight"])
    for p in outputs:
        if (b := weights.get(f"{p}.bias")) is not None:  # (..., D), per expert if fused
            bf = b.astype(mx.float32)
            cut = (bf @ u)[..., None] * u
            weights[f"{p}.bias"] = (bf - (cut if share(p) == 1.0 else share(p) * cut)
                                    ).astype(b.dtype)
    mx.eval(weights)
    return report
