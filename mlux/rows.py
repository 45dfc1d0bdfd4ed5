"""Per-row steering: the `Steering` spec, and the hooks that give each batch row its own terms.

A row's terms become one hook per steered layer carrying every row's delta and window, so rows
that share a batch (alphas of one sweep, requests of one server) never leak into each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import mlx.core as mx

from .hooks import Hook
from .interventions import Positions, create_row_steering_hook, directions_at, resolve_positions

__all__ = ["RowSteering", "Steering", "row_steering_hooks", "row_terms", "steers_prefix"]


@dataclass(frozen=True)
class Steering:
    """One steering term for one row: `alpha * vector` at `layers` and `positions`.

    `vector` is a `(D,)` array (added at every layer in `layers`), a `{layer: (D,)}` dict or a
    `SteeringVector` (its own layers unless `layers` narrows them).
    """

    vector: Any
    alpha: float = 1.0
    layers: Optional[Sequence[int]] = None
    positions: Positions = "all"

    def per_layer(self) -> dict[int, mx.array]:
        return {i: mx.array(v, dtype=mx.float32)
                for i, v in directions_at(self.vector, self.layers).items()}


RowSteering = Union[None, Steering, Sequence[Steering]]


def row_terms(row: RowSteering) -> list[Steering]:
    """A row's steering as a list of terms (None = unsteered)."""
    return [] if row is None else [row] if isinstance(row, Steering) else list(row)


def steers_prefix(row: RowSteering, prompt_length: int) -> bool:
    """Does any term touch the positions before the prompt's last token? If not, rows with the
    same prompt can share one prefill of `prompt[:-1]`."""
    return any(resolve_positions(t.positions, prompt_length)[0] < prompt_length - 1
               for t in row_terms(row) if t.alpha)


def row_steering_hooks(
    hooked: Any, rows: Sequence[RowSteering], prompt_lengths: Sequence[int]
) -> list[tuple[str, Hook]]:
    """One hook per steered layer carrying every row's delta and position window; rows that
    don't steer a layer get a zero delta there (so row i at layer 8 leaves layer 12 alone)."""
    terms: dict[tuple[int, int], list[tuple[mx.array, int, float]]] = {}
    for r, row in enumerate(rows):
        for term in row_terms(row):
            start, end = resolve_positions(term.positions, prompt_lengths[r])
            for layer, vec in term.per_layer().items():
                if vec.shape != (hooked.hidden_size,):
                    raise ValueError(f"steering vector for layer {layer} has shape "
                                     f"{tuple(vec.shape)}; the model's hidden size is "
                                     f"{hooked.hidden_size}")
                terms.setdefault((layer, r), []).append((vec * term.alpha, start, end))
    hooks = []
    for layer in sorted({lyr for lyr, _ in terms}):
        # Terms of one row at one layer must share a window to fold into one delta.
        width = max(len(terms.get((layer, r), [])) for r in range(len(rows)))
        for k in range(width):
            deltas, starts, ends = [], [], []
            for r in range(len(rows)):
                row_k = terms.get((layer, r), [])
                # A zero delta is a no-op anywhere: give it the widest window.
                vec, start, end = row_k[k] if k < len(row_k) else (None, 0, float("inf"))
                deltas.append(mx.zeros((hooked.hidden_size,)) if vec is None else vec)
                starts.append(start)
                ends.append(end)
            hooks.append((f"residuals_{layer}",
                          create_row_steering_hook(mx.stack(deltas), starts, ends)))
    return hooks
