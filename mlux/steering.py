"""Steering: hooks that add a vector, add position-specific deltas or project a direction out,
and the `Steering` spec that gives each row of a batch its own terms.

Positions are absolute (`ctx.offset + t`, per row in padded batches), so a hook does the same
thing whether the prompt runs in one pass, in prefill chunks, or token by token under the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import mlx.core as mx

from .hooks import Hook, HookContext
from .positions import Positions, resolve_positions

__all__ = [
    "RowSteering",
    "Steering",
    "as_f32",
    "create_ablation_hook",
    "create_additive_hook",
    "create_row_steering_hook",
    "create_steering_hook",
    "directions_at",
    "row_steering_hooks",
    "row_terms",
    "steering_hooks",
    "steers_prefix",
    "weighted_ablation_hooks",
]

def as_f32(value: Any, what: str) -> mx.array:
    """`value` (an array or nested numbers) as float32, or one ValueError naming `what` and
    the problem (a wrong type, ragged lists, NaN / inf) instead of MLX's own."""
    try:
        arr = value if isinstance(value, mx.array) else mx.array(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an array of numbers, got "
                         f"{type(value).__name__}") from None
    if not mx.issubdtype(arr.dtype, mx.floating) and not mx.issubdtype(arr.dtype, mx.integer):
        raise ValueError(f"{what} must be numeric, got {arr.dtype}")
    arr = arr.astype(mx.float32)
    if not bool(mx.all(mx.isfinite(arr)).item()):
        raise ValueError(f"{what} contains NaN or inf values")
    return arr


def _one_direction(vector: Any) -> Any:
    """The `(D,)` array of a one-layer `SteeringVector` (or the array itself)."""
    directions = getattr(vector, "directions", None)
    if not isinstance(directions, Mapping):
        return vector
    if len(directions) != 1:
        raise ValueError(f"this SteeringVector has layers {sorted(directions)}; a hook takes one "
                         "direction: use steering_hooks(vector, alpha) for every layer, or "
                         "vector[layer] for one")
    return next(iter(directions.values()))


def _window_mask(ctx: HookContext, start: float, end: float) -> Union[None, bool, mx.array]:
    """None if every position of this forward is inside [start, end), False if none is, else
    a (B|1, T, 1) mask."""
    if ctx.row_offsets is None:
        first, last = ctx.offset, ctx.offset + ctx.length - 1
        if first >= start and last < end:
            return None
        if last < start or first >= end:
            return False
    pos = ctx.positions()
    inside = pos >= start if end == float("inf") else (pos >= start) & (pos < end)
    return inside[..., None]


def _positional(delta_of: Any, start: float, end: float) -> Hook:
    def hook(x: mx.array, ctx: HookContext) -> Optional[mx.array]:
        mask = _window_mask(ctx, start, end)
        if mask is False:
            return None
        delta = delta_of(x, ctx)
        return x + (delta if mask is None else mx.where(mask, delta, 0).astype(x.dtype))

    return hook


def create_steering_hook(
    vector: Any,
    alpha: Union[float, mx.array] = 1.0,
    *,
    positions: Positions = "all",
    prompt_length: Optional[int] = None,
) -> Hook:
    """Add `alpha * vector` at the chosen positions, cast to the activation's dtype.

    `vector` is `(D,)` or per-row `(B, D)`; `alpha` a float or per-row `(B,)` (0 = unsteered row).
    """
    vec = as_f32(_one_direction(vector), "steering vector")
    if vec.ndim not in (1, 2) or vec.shape[-1] == 0:
        raise ValueError(f"steering vector must have shape (D,) or (B, D), got {vec.shape}")
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if alpha != alpha or abs(alpha) == float("inf"):
            raise ValueError(f"alpha must be finite, got {alpha}")
        delta = vec * alpha
    else:
        a = as_f32(alpha, "alpha")
        if a.ndim != 1:
            raise ValueError(f"per-row alpha must have shape (B,), got {a.shape}")
        delta = a[:, None] * (vec if vec.ndim == 2 else vec[None])
    delta = delta[:, None, :] if delta.ndim == 2 else delta  # (B, 1, D) or (D,)
    start, end = resolve_positions(positions, prompt_length)
    cast: dict[Any, mx.array] = {}

    def delta_of(x: mx.array, ctx: HookContext) -> mx.array:
        if x.shape[-1] != delta.shape[-1]:
            raise ValueError(f"steering vector has size {delta.shape[-1]} but {ctx.name} has "
                             f"hidden size {x.shape[-1]}")
        if delta.ndim == 3 and delta.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"per-row steering has {delta.shape[0]} rows, batch has {x.shape[0]}")
        if x.dtype not in cast:
            cast[x.dtype] = delta.astype(x.dtype)
        return cast[x.dtype]

    return _positional(delta_of, start, end)


def create_row_steering_hook(
    deltas: mx.array, starts: Sequence[float], ends: Sequence[float]
) -> Hook:
    """Add `deltas[b]` to batch row b at its absolute positions in `[starts[b], ends[b])`.

    Positions are per row (`ctx.positions()`), so left padding and the KV cache are accounted
    for; a zero row leaves its row untouched.
    """
    table = as_f32(deltas, "per-row deltas")
    if table.ndim != 2 or len(starts) != table.shape[0] or len(ends) != table.shape[0]:
        raise ValueError(f"per-row steering needs (B, D) deltas and B starts/ends; got "
                         f"{table.shape}, {len(starts)}, {len(ends)}")
    lo_max, hi_min = max(float(s) for s in starts), min(float(e) for e in ends)
    lo = mx.array([float(s) for s in starts])[:, None]  # (B, 1)
    hi = mx.array([min(float(e), 2.0**31) for e in ends])[:, None]
    table = table[:, None, :]  # (B, 1, D)
    cast: dict[Any, mx.array] = {}

    def hook(x: mx.array, ctx: HookContext) -> mx.array:
        if x.shape[0] != table.shape[0] or x.shape[-1] != table.shape[-1]:
            raise ValueError(f"per-row steering for {table.shape[0]} rows of size "
                             f"{table.shape[-1]}; {ctx.name} has shape {tuple(x.shape)}")
        if x.dtype not in cast:
            cast[x.dtype] = table.astype(x.dtype)
        if ctx.row_offsets is None and lo_max <= ctx.offset and ctx.offset + ctx.length <= hi_min:
            return x + cast[x.dtype]  # rows share positions, all inside every row's window
        pos = ctx.positions()  # (1|B, T)
        inside = ((pos >= lo) & (pos < hi))[..., None]
        return x + mx.where(inside, cast[x.dtype], 0).astype(x.dtype)

    return hook


def create_additive_hook(deltas: Union[mx.array, Mapping[int, Any]]) -> Hook:
    """Add `deltas[p]` at absolute position p: an `(T, D)` array or a `{position: vector}` dict.

    Positions past the table (or missing from the dict) are left alone.
    """
    if isinstance(deltas, Mapping):
        if not deltas:
            raise ValueError("additive hook needs at least one {position: vector} entry")
        if any(not isinstance(p, int) or p < 0 for p in deltas):
            raise ValueError("additive hook positions must be non-negative ints")
        rows = {p: as_f32(v, f"delta at position {p}") for p, v in deltas.items()}
        dims = {v.shape for v in rows.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"every delta must be a (D,) vector of one size, got {sorted(dims)}")
        (dim,) = next(iter(dims))
        table = mx.zeros((max(rows) + 1, dim), mx.float32)
        for p, v in rows.items():
            table[p] = v
    else:
        table = as_f32(deltas, "additive deltas")
        if table.ndim != 2:
            raise ValueError(f"additive deltas must have shape (T, D), got {table.shape}")
    n = table.shape[0]

    def hook(x: mx.array, ctx: HookContext) -> Optional[mx.array]:
        if ctx.row_offsets is None and ctx.offset >= n:
            return None  # decode steps past the table: nothing to add
        if x.shape[-1] != table.shape[1]:
            raise ValueError(f"deltas have size {table.shape[1]}, {ctx.name} has {x.shape[-1]}")
        pos = ctx.positions()  # (1|B, T)
        valid = (pos >= 0) & (pos < n)
        rows = mx.take(table, mx.clip(pos, 0, n - 1), axis=0)  # (1|B, T, D)
        return x + mx.where(valid[..., None], rows, 0).astype(x.dtype)

    return hook


def create_ablation_hook(
    direction: Any, *, positions: Positions = "all", prompt_length: Optional[int] = None,
    weight: float = 1.0,
) -> Hook:
    """Project `direction` out of the stream: x - weight (x . d) d with d unit-norm (computed in
    f32); a `weight` below 1 removes only that share of the component (heretic's kernels)."""
    d = as_f32(_one_direction(direction), "ablation direction")
    if weight != weight or abs(weight) == float("inf"):
        raise ValueError(f"ablation weight must be finite, got {weight}")
    if d.ndim != 1:
        raise ValueError(f"ablation direction must have shape (D,), got {d.shape}")
    norm = float(mx.linalg.norm(d).item())
    if norm == 0.0:
        raise ValueError("ablation direction is the zero vector")
    unit = d / norm
    start, end = resolve_positions(positions, prompt_length)

    def delta_of(x: mx.array, ctx: HookContext) -> mx.array:
        if x.shape[-1] != unit.shape[0]:
            raise ValueError(f"direction has size {unit.shape[0]}, {ctx.name} has {x.shape[-1]}")
        proj = x.astype(mx.float32) @ unit  # (B, T)
        return (-weight * proj[..., None] * unit).astype(x.dtype)

    return _positional(delta_of, start, end)


def weighted_ablation_hooks(
    direction: Any, weights: Mapping[int, float], *, positions: Positions = "all",
    prompt_length: Optional[int] = None,
) -> list[tuple[str, Hook]]:
    """`direction` projected out of block i's attention and MLP outputs (`attention_i`,
    `mlp_i`) with weight `weights[i]`: a directional ablation's writers, as `mlux search`
    hooks them and `mlux bake --ablate` edits them (layers not in `weights` untouched)."""
    return [(f"{kind}_{i}", create_ablation_hook(direction, positions=positions,
                                                 prompt_length=prompt_length, weight=w))
            for i, w in weights.items() for kind in ("attention", "mlp")]


def directions_at(vectors: Any, layers: Optional[Iterable[int]] = None) -> dict[int, Any]:
    """`{layer: (D,) direction}` from a `{layer: vector}` dict or a `SteeringVector` (narrowed
    to `layers` when given), or from one `(D,)` vector placed at every layer in `layers`."""
    directions = getattr(vectors, "directions", vectors)
    if isinstance(directions, Mapping):
        chosen = list(directions) if layers is None else list(layers)
        missing = [i for i in chosen if i not in directions]
        if missing:
            raise ValueError(f"no vector for layers {missing}; the vector has layers "
                             f"{sorted(directions)}")
        out = {i: directions[i] for i in chosen}
    else:
        if not layers:
            raise ValueError("a single (D,) steering vector needs layers=[...] to say where to "
                             "add it")
        out = {i: directions for i in layers}
    if not out:
        raise ValueError("no layers to steer")
    return out


def steering_hooks(
    vectors: Any,
    alpha: Union[float, mx.array] = 1.0,
    *,
    layers: Optional[Iterable[int]] = None,
    positions: Positions = "all",
    prompt_length: Optional[int] = None,
) -> list[tuple[str, Hook]]:
    """`(residuals_i, hook)` pairs for `HookedModel.hooks`: one vector per layer (a dict or a
    `SteeringVector`), or one `(D,)` vector at every layer in `layers`."""
    per_layer = directions_at(vectors, layers)
    return [
        (f"residuals_{i}", create_steering_hook(v, alpha, positions=positions,
                                                prompt_length=prompt_length))
        for i, v in per_layer.items()
    ]


@dataclass(frozen=True)
class Steering:
    """One steering term for one row: `alpha * vector` at `layers` and `positions`.

    `vector` is a `(D,)` array (added at every layer in `layers`), a `{layer: (D,)}` dict or a
    `SteeringVector` (its own layers unless `layers` narrows them).
    `sae_clamp=(sae, feature, value)` clamps an SAE feature at the SAE's hook point instead
    (`mlux.sae`: adds decode(clamped) - decode(original); value None = its own value).
    `condition` (a `mlux.Condition` or a rule of them) gates the term: the decoder decides it
    once per row from the prompt (`mlux.condition_gate`).
    """

    vector: Any = None
    alpha: float = 1.0
    layers: Optional[Sequence[int]] = None
    positions: Positions = "all"
    sae_clamp: Optional[tuple[Any, int, Optional[float]]] = None
    condition: Any = None

    def per_layer(self) -> dict[int, mx.array]:
        if self.vector is None:
            if self.sae_clamp is None:
                raise ValueError("a Steering term needs a vector or sae_clamp=(sae, feature, "
                                 "value)")
            return {}
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
               for t in row_terms(row) if t.alpha and t.condition is None)


def row_steering_hooks(
    hooked: Any, rows: Sequence[RowSteering], prompt_lengths: Sequence[int]
) -> list[tuple[str, Hook]]:
    """One hook per steered layer carrying every row's delta and position window; rows that
    don't steer a layer get a zero delta there (so row i at layer 8 leaves layer 12 alone)."""
    terms: dict[tuple[int, int], list[tuple[mx.array, int, float]]] = {}
    for r, row in enumerate(rows):
        for term in row_terms(row):
            if term.condition is not None:  # decided per row in the decoder's prefill
                raise ValueError("a conditional Steering term is decided by mlux's decoder "
                                 "(generate_batch, stream_rows, Decoder.insert), not by hooks")
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
    return hooks + _sae_clamp_hooks(hooked, rows, prompt_lengths)


def _sae_clamp_hooks(hooked: Any, rows: Sequence[RowSteering], prompt_lengths: Sequence[int]
                     ) -> list[tuple[str, Hook]]:
    """One hook per (SAE, clamp slot) carrying every row's `sae_clamp` (None for rows without)."""
    by_sae: dict[int, tuple[Any, dict[int, list[tuple[Any, float, float]]]]] = {}
    for r, row in enumerate(rows):
        for term in row_terms(row):
            if term.sae_clamp is None:
                continue
            sae, feature, value = term.sae_clamp
            if sae.config.hook not in hooked.hook_points:
                raise ValueError(f"sae_clamp: the SAE's hook_name {sae.config.hook_name!r} is "
                                 "not a hook point of this model")
            sae.check_model(hooked.hidden_size, hooked.num_layers)
            start, end = resolve_positions(term.positions, prompt_lengths[r])
            by_sae.setdefault(id(sae), (sae, {}))[1].setdefault(r, []).append(
                ((feature, value), start, end))
    hooks = []
    for sae, per_row in by_sae.values():
        for k in range(max(len(v) for v in per_row.values())):
            slot = [per_row.get(r, [])[k] if k < len(per_row.get(r, [])) else
                    (None, 0, float("inf")) for r in range(len(rows))]
            hooks.append((sae.config.hook, sae.row_clamp_hook(
                [c for c, _, _ in slot], [s for _, s, _ in slot], [e for _, _, e in slot])))
    return hooks
