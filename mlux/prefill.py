"""Prompt caches: the one chunked prefill (as mlx-lm's `generate_step` prefills: `prompt[:-1]`
in chunks with only the cache state evaluated, then the last token for logits), and the
bookkeeping of a cache the decoder borrows (checkpoint, restore) or batches.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx

from .hooks import Start, cache_offsets, normalise_start
from .model import HookedModel

__all__ = ["PREFILL_CHUNK", "batched", "checkpoint", "fill_cache", "prefill", "restore"]

PREFILL_CHUNK = 2048  # mlx-lm's prefill_step_size


def _shift(start: Start, by: int) -> Start:
    offset, rows = normalise_start(start)
    return offset + by if rows is None else [r + by for r in rows]


def fill_cache(hooked: HookedModel, tokens: mx.array, cache: list[Any],
               chunk_size: int = PREFILL_CHUNK, start: Start = 0) -> None:
    """Run `tokens` `(B, T)` into `cache` in chunks, evaluating only the cache state: the one
    chunked prefill (no logits are kept, so no `(T, vocab)` array is ever materialised).
    `start`: the position of column 0 (per row: minus its left padding)."""
    for s in range(0, tokens.shape[1], chunk_size):
        hooked.forward_at(tokens[:, s : s + chunk_size], cache, _shift(start, s))
        mx.eval([c.state for c in cache])
        mx.clear_cache()


def prefill(hooked: HookedModel, tokens: mx.array, cache: list[Any],
            chunk_size: int = PREFILL_CHUNK, start: Start = 0) -> mx.array:
    """`fill_cache` with all but the last token, then the last token alone: its logits `(B, V)`.
    Hooks are whatever the caller has installed."""
    fill_cache(hooked, tokens[:, :-1], cache, chunk_size, start)
    last = _shift(start, tokens.shape[1] - 1)
    return hooked.forward_at(tokens[:, -1:], cache, last)[:, -1]


def batched(cache: list[Any]) -> list[Any]:
    """Batch caches (which can extend and filter) for a lane, converting a lone row's plain
    ones (`KVCache.merge` gives a `BatchKVCache`)."""
    return [c if hasattr(c, "extend") else type(c).merge([c]) for c in cache]


def checkpoint(cache: list[Any], extra: int) -> list[tuple[int, Any]]:
    """Deep copies of the layers whose cache can't simply be trimmed back after `extra` tokens."""
    saved = []
    for i, c in enumerate(cache):
        size = getattr(c, "max_size", None)
        rotates = size is not None and cache_offsets(c)[0] + extra > size
        if rotates or not (hasattr(c, "is_trimmable") and c.is_trimmable()):
            saved.append((i, copy.deepcopy(c)))
    return saved


def restore(cache: list[Any], start: int, saved: list[tuple[int, Any]]) -> None:
    """Hand a lent cache back as `checkpoint` found it: copies put back, the rest trimmed."""
    copies = dict(saved)
    for i, c in enumerate(cache):
        if i in copies:
            cache[i] = copies[i]
        else:
            grown = cache_offsets(c)[0] - start
            if grown > 0:
                c.trim(grown)
