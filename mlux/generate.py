"""KV-cached generation with hooks: prefill once, continue many times from the same cache.

Layered as in mlx-lm: `prefill_with_cache` -> `stream_from_cache` -> `generate_from_cache`, all
on the one decoder (`mlux.decode`). The cache is handed back exactly as it was given (trimmed
back, or restored), so one prefill serves any number of steered continuations.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .decode import PREFILL_CHUNK, Decoder, prefill
from .hooks import cache_offsets
from .inputs import Inputs
from .model import HookedModel, HookSpec

__all__ = ["cache_length", "generate_from_cache", "prefill_with_cache", "stream_from_cache"]


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
    """Run the prompt once into a fresh (or given) mlx-lm cache, as mlx-lm prefills: all but
    the last token in chunks of `chunk_size` (cache state only), then the last token.

    Returns the cache and the last position's logits `(V,)`.
    """
    batch = hooked.tokenize(prompt)
    if batch.tokens.shape[0] != 1:
        raise ValueError("prefill_with_cache takes one prompt; use generate_batch for several")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    cache = make_prompt_cache(hooked.model) if cache is None else cache
    with hooked.hooks(hooks):
        logits = prefill(hooked, batch.tokens, cache, chunk_size)
        mx.eval(logits)
    return cache, logits[0]


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
    decoder = Decoder(hooked, hooks=hooks)
    decoder.insert_prefilled(cache, logits, prompt_length=cache_length(cache),
                             max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             seed=seed)
    with contextlib.closing(decoder.stream()) as steps:
        for step in steps:
            for event in step:
                if event.token is not None:
                    yield event.token


def generate_from_cache(hooked: HookedModel, cache: list[Any], logits: mx.array,
                        **kwargs: Any) -> list[int]:
    """All tokens of `stream_from_cache` (same arguments: `max_tokens`, `hooks`, `temperature`,
    `top_p`, `seed`) as a list, EOS not included; the cache is left as it was found."""
    return list(stream_from_cache(hooked, cache, logits, **kwargs))
