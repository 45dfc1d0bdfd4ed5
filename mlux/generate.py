"""KV-cached generation with hooks: prefill once, continue many times from the same cache.

Layered as in mlx-lm: `prefill_with_cache` -> `stream_from_cache` -> `generate_from_cache`.
The cache is handed back exactly as it was given (trimmed back, or restored), so one prefill
serves any number of steered continuations.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .hooks import cache_offsets
from .inputs import Inputs
from .model import HookedModel, HookSpec
from .sampling import make_seeded_sampler

__all__ = [
    "PREFILL_CHUNK",
    "cache_length",
    "eos_ids",
    "generate_from_cache",
    "prefill_with_cache",
    "stream_from_cache",
]

PREFILL_CHUNK = 512


def eos_ids(tokenizer: Any) -> set[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids:
        return {int(i) for i in ids}
    eos = getattr(tokenizer, "eos_token_id", None)
    return {int(eos)} if isinstance(eos, int) else set()


def cache_length(cache: list[Any]) -> int:
    """Token slots already in a prompt cache."""
    return cache_offsets(cache[0])[0] if cache else 0


def prefill_with_cache(
    hooked: HookedModel,
    prompt: Inputs,
    *,
    hooks: Optional[HookSpec] = None,
    cache: Optional[list[Any]] = None,
    chunk_size: int = PREFILL_CHUNK,
) -> tuple[list[Any], mx.array]:
    """Run the prompt once (in chunks of `chunk_size`) into a fresh (or given) mlx-lm cache.

    Returns the cache and the last position's logits `(V,)`.
    """
    batch = hooked.tokenize(prompt)
    if batch.tokens.shape[0] != 1:
        raise ValueError("prefill_with_cache takes one prompt; use generate_batch for several")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache = make_prompt_cache(hooked.model) if cache is None else cache
    tokens = batch.tokens
    with hooked.hooks(hooks):
        for start in range(0, tokens.shape[1], chunk_size):
            logits = hooked.model(tokens[:, start : start + chunk_size], cache=cache)
            mx.eval(logits, [c.state for c in cache])
    return cache, logits[0, -1]


def _checkpoint(cache: list[Any], extra: int) -> list[tuple[int, Any]]:
    """Deep copies of the layers whose cache can't simply be trimmed back after `extra` tokens."""
    saved = []
    for i, c in enumerate(cache):
        size = getattr(c, "max_size", None)
        rotates = size is not None and cache_offsets(c)[0] + extra > size
        if rotates or not (hasattr(c, "is_trimmable") and c.is_trimmable()):
            saved.append((i, copy.deepcopy(c)))
    return saved


def _restore(cache: list[Any], start: int, saved: list[tuple[int, Any]]) -> None:
    copies = dict(saved)
    for i, c in enumerate(cache):
        if i in copies:
            cache[i] = copies[i]
        else:
            grown = cache_offsets(c)[0] - start
            if grown > 0:
                c.trim(grown)


def stream_from_cache(
    hooked: HookedModel,
    cache: list[Any],
    logits: mx.array,
    *,
    max_tokens: int,
    hooks: Optional[HookSpec] = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
) -> Iterator[int]:
    """Yield token ids continuing from a prefilled cache until EOS or `max_tokens`.

    The cache is restored when the generator finishes or is closed early.
    """
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be a non-negative int, got {max_tokens!r}")
    logits = logits.reshape(-1)
    sampler = make_seeded_sampler(temperature, top_p, seed)
    stop = eos_ids(hooked.tokenizer)
    start = cache_length(cache)
    saved = _checkpoint(cache, max_tokens)

    def sample(lg: mx.array) -> mx.array:
        return sampler((lg - mx.logsumexp(lg, axis=-1, keepdims=True))[None])

    with hooked.hooks(hooks):
        try:
            y = sample(logits)
            mx.async_eval(y)
            for n in range(max_tokens):
                if n + 1 < max_tokens:  # queue the next step before reading this token
                    next_y = sample(hooked.model(y[None], cache=cache)[0, -1])
                    mx.async_eval(next_y)
                token = int(y.item())
                if token in stop:
                    return
                yield token
                if n + 1 < max_tokens:
                    y = next_y
        finally:
            _restore(cache, start, saved)


def generate_from_cache(hooked: HookedModel, cache: list[Any], logits: mx.array,
                        **kwargs: Any) -> list[int]:
    """All tokens of `stream_from_cache` (same arguments: `max_tokens`, `hooks`, `temperature`,
    `top_p`, `seed`) as a list, EOS not included; the cache is left as it was found."""
    return list(stream_from_cache(hooked, cache, logits, **kwargs))
