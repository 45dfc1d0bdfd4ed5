"""Batched generation: many rows decoded together, each with its own steering.

Rows are left-padded into mlx-lm's batch caches (`BatchKVCache`), whose masks hide the padding
and whose per-row offsets give each row the positions it would have alone; so row i of a batch
yields the tokens generating row i alone would (greedy). Decoding one row is bound by memory
bandwidth, so a batch of rows costs little more than one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from .generate import PREFILL_CHUNK, eos_ids, prefill_with_cache, stream_from_cache
from .inputs import TokenBatch, make_batch_cache, to_token_batch
from .interventions import (
    Positions,
    create_row_steering_hook,
    directions_at,
    resolve_positions,
)
from .model import HookedModel, HookSpec
from .sampling import make_seeded_sampler, sample_rows

__all__ = [
    "Steering",
    "collect_rows",
    "decode_batch",
    "generate_batch",
    "merge_prefills",
    "row_steering_hooks",
    "stream_batch",
    "stream_rows",
]


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


def row_steering_hooks(
    hooked: HookedModel, rows: Sequence[RowSteering], prompt_lengths: Sequence[int]
) -> list[tuple[str, Any]]:
    """One hook per steered layer carrying every row's delta and position window; rows that
    don't steer a layer get a zero delta there (so row i at layer 8 leaves layer 12 alone)."""
    terms: dict[tuple[int, int], list[tuple[mx.array, int, float]]] = {}
    for r, row in enumerate(rows):
        row_terms = [] if row is None else [row] if isinstance(row, Steering) else list(row)
        for term in row_terms:
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
                row_terms = terms.get((layer, r), [])
                vec, start, end = row_terms[k] if k < len(row_terms) else (None, 0, 0)
                deltas.append(mx.zeros((hooked.hidden_size,)) if vec is None else vec)
                starts.append(start)
                ends.append(end)
            hooks.append((f"residuals_{layer}",
                          create_row_steering_hook(mx.stack(deltas), starts, ends)))
    return hooks


def merge_prefills(caches: Sequence[list[Any]]) -> list[Any]:
    """Stack single-row prompt caches (e.g. one prefill repeated) into one left-padded batch
    cache; the originals are not modified."""
    layers = len(caches[0])
    out = []
    for i in range(layers):
        first = caches[0][i]
        if not isinstance(first, KVCache):
            raise ValueError(f"cannot batch a {type(first).__name__} prefill; use generate_batch")
        out.append(first.merge([c[i] for c in caches]))
    return out


def stream_batch(
    hooked: HookedModel,
    cache: list[Any],
    logits: mx.array,
    *,
    max_tokens: Union[int, Sequence[int]],
    hooks: Optional[HookSpec] = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: Optional[Union[int, Sequence[int]]] = None,
) -> Iterator[list[Optional[int]]]:
    """Decode every row of a prefilled batch cache; yield one list per step with each row's new
    token, or None for rows that already stopped (EOS or their `max_tokens`)."""
    rows = logits.shape[0]
    limits = [max_tokens] * rows if isinstance(max_tokens, int) else list(max_tokens)
    if len(limits) != rows or any(not isinstance(m, int) or m < 0 for m in limits):
        raise ValueError(f"max_tokens must be a non-negative int or one per row ({rows})")
    seeds = ([None] * rows if seed is None else
             [seed + r for r in range(rows)] if isinstance(seed, int) else list(seed))
    samplers = [make_seeded_sampler(temperature, top_p, s) for s in seeds]
    stop = eos_ids(hooked.tokenizer)

    def sample(lg: mx.array) -> mx.array:
        return sample_rows(lg, samplers, greedy=temperature == 0)

    done = [m == 0 for m in limits]
    counts = [0] * rows
    with hooked.hooks(hooks):
        y = sample(logits)
        mx.async_eval(y)
        while not all(done):
            if max(lim - c for lim, c, d in zip(limits, counts, done, strict=True) if not d) > 1:
                next_y = sample(hooked.model(y[:, None], cache=cache)[:, -1])
                mx.async_eval(next_y)
            step: list[Optional[int]] = []
            for r, token in enumerate(y.tolist()):
                if done[r] or token in stop:
                    done[r] = True
                    step.append(None)
                    continue
                step.append(token)
                counts[r] += 1
                done[r] = counts[r] >= limits[r]
            yield step
            if not all(done):
                y = next_y


def collect_rows(steps: Iterator[list[Optional[int]]], rows: int) -> list[list[int]]:
    """Gather a step stream (one list per step, None for stopped rows) into per-row tokens."""
    out: list[list[int]] = [[] for _ in range(rows)]
    for step in steps:
        for r, token in enumerate(step):
            if token is not None:
                out[r].append(token)
    return out


def decode_batch(hooked: HookedModel, cache: list[Any], logits: mx.array, **kwargs: Any
                 ) -> list[list[int]]:
    """All tokens of `stream_batch`, per row."""
    return collect_rows(stream_batch(hooked, cache, logits, **kwargs), logits.shape[0])


def _prefill_batch(hooked: HookedModel, batch: TokenBatch, hooks: Optional[HookSpec],
                   chunk_size: int) -> Optional[tuple[list[Any], mx.array]]:
    """Prefill a left-padded batch into fresh batch caches: (cache, last logits (B, V)), or
    None when this architecture can't run it as one masked batch."""
    cache = make_batch_cache(hooked.model, batch.left_padding)
    if cache is None or (batch.is_padded and not hooked._supports_padded_batch()):
        return None
    with hooked.hooks(hooks):
        for start in range(0, batch.tokens.shape[1], chunk_size):
            logits = hooked.model(batch.tokens[:, start : start + chunk_size], cache=cache)
            mx.eval(logits, [c.state for c in cache])
    return cache, logits[:, -1]


def _terms(row: RowSteering) -> list[Steering]:
    return [] if row is None else [row] if isinstance(row, Steering) else list(row)


def stream_rows(
    hooked: HookedModel,
    tokens: list[int],
    rows: Sequence[RowSteering],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: Optional[Sequence[Optional[int]]] = None,
) -> Iterator[list[Optional[int]]]:
    """Continue one prompt once per row of steering, yielding one list per step (a token, or
    None, per row). One batch when the architecture allows it, sharing a single prefill when no
    row steers the prompt; otherwise row after row through the plain cached path. Closing the
    stream removes every hook and hands back every cache."""
    n, b = len(tokens), len(rows)
    seeds = [None] * b if seeds is None else list(seeds)
    touches = [any(resolve_positions(t.positions, n)[0] < n for t in _terms(r)) for r in rows]
    sample = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    hooks = row_steering_hooks(hooked, rows, [n] * b)
    start = None
    if hooked._supports_padded_batch():
        if any(touches):
            start = _prefill_batch(hooked, to_token_batch(None, [tokens] * b), hooks,
                                   PREFILL_CHUNK)
        else:  # the prompt is unsteered: prefill once, share it
            cache, logits = prefill_with_cache(hooked, tokens)
            with contextlib.suppress(ValueError):  # e.g. rotating caches that can't merge
                start = merge_prefills([cache] * b), mx.repeat(logits[None], b, axis=0)
    if start is not None:
        yield from stream_batch(hooked, *start, hooks=hooks, seed=seeds, **sample)
        return
    shared = None
    for r, row in enumerate(rows):
        row_hooks = row_steering_hooks(hooked, [row], [n]) if row else None
        if touches[r]:
            cache, logits = prefill_with_cache(hooked, tokens, hooks=row_hooks)
        else:
            shared = shared or prefill_with_cache(hooked, tokens)
            cache, logits = shared
        gen = stream_from_cache(hooked, cache, logits, hooks=row_hooks, seed=seeds[r], **sample)
        with contextlib.closing(gen):
            for token in gen:
                yield [token if i == r else None for i in range(b)]


def generate_batch(
    hooked: HookedModel,
    prompts: Sequence[Union[str, Sequence[int]]],
    *,
    max_tokens: Union[int, Sequence[int]],
    hooks: Optional[HookSpec] = None,
    steering: Optional[Sequence[RowSteering]] = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: Optional[Union[int, Sequence[int]]] = None,
    chunk_size: int = PREFILL_CHUNK,
) -> list[list[int]]:
    """Generate every prompt in one batch; row i equals generating prompt i alone with row i's
    steering (greedy). `hooks` apply to the whole batch (per-row forms allowed); `steering`
    gives each row its own `Steering` terms (or None), positions counted per row."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("generate_batch takes a non-empty list of prompts")
    batch = hooked.tokenize(list(prompts))
    lengths = batch.lengths
    if steering is not None and len(steering) != len(lengths):
        raise ValueError(f"steering has {len(steering)} rows for {len(lengths)} prompts")
    row_hooks = row_steering_hooks(hooked, steering, lengths) if steering else []
    with hooked.hooks(hooks):
        start = _prefill_batch(hooked, batch, row_hooks, chunk_size)
        if start is None:
            raise ValueError(f"{hooked.model_type} models cannot run left-padded batches in "
                             "mlx-lm; generate these prompts one at a time (generate_from_cache)")
        return decode_batch(hooked, *start, hooks=row_hooks, max_tokens=max_tokens,
                            temperature=temperature, top_p=top_p, seed=seed)
