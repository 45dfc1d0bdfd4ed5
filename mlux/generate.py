"""Generation entry points, all thin layers on the one decoder (`mlux.decode.Decoder`).

One row from a prefilled cache, layered as in mlx-lm: `prefill_with_cache` ->
`stream_from_cache` -> `generate_from_cache`; the cache is handed back exactly as it was given
(trimmed back, or restored), so one prefill serves any number of steered continuations.
Many rows: `generate_batch` (one prompt each) and `stream_rows` (one prompt, a row per
steering); row i yields what generating row i alone would (greedy).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .decode import Decoder
from .hooks import cache_start
from .inputs import Inputs
from .model import HookedModel, HookSpec
from .prefill import PREFILL_CHUNK, prefill
from .steering import RowSteering

__all__ = [
    "cache_length",
    "collect_rows",
    "generate_batch",
    "generate_from_cache",
    "prefill_with_cache",
    "stream_from_cache",
    "stream_rows",
]


def cache_length(cache: list[Any]) -> int:
    """Tokens a prompt cache has consumed (for state-space layers: as mlux stamped it)."""
    return cache_start(cache)[0]


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
    start = 0 if cache is None else cache_length(cache)
    cache = make_prompt_cache(hooked.model) if cache is None else cache
    with hooked.hooks(hooks):
        logits = prefill(hooked, batch.tokens, cache, chunk_size, start)
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


def collect_rows(steps: Iterator[list[Optional[int]]], rows: int) -> list[list[int]]:
    """Gather a step stream (one list per step, None for stopped rows) into per-row tokens."""
    out: list[list[int]] = [[] for _ in range(rows)]
    for step in steps:
        for r, token in enumerate(step):
            if token is not None:
                out[r].append(token)
    return out


def _steps(decoder: Decoder, uids: list[int]) -> Iterator[list[Optional[int]]]:
    """The decoder's events as one list per step: each row's token, or None."""
    index = {uid: r for r, uid in enumerate(uids)}
    with contextlib.closing(decoder.stream()) as steps:
        for events in steps:
            step: list[Optional[int]] = [None] * len(uids)
            for e in events:
                step[index[e.uid]] = e.token
            yield step


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
    None, per row). Rows whose steering leaves `prompt[:-1]` alone share one prefill of it.
    Closing the stream ends the decoding."""
    decoder = Decoder(hooked)
    uids = decoder.insert([tokens] * len(rows), max_tokens=max_tokens, steering=list(rows),
                          temperature=temperature, top_p=top_p,
                          seed=None if seeds is None else list(seeds))
    return _steps(decoder, uids)


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
    if steering is not None and len(steering) != len(prompts):
        raise ValueError(f"steering has {len(steering)} rows for {len(prompts)} prompts")
    decoder = Decoder(hooked, hooks=hooks, chunk_size=chunk_size)
    uids = decoder.insert(list(prompts), max_tokens=max_tokens, steering=steering,
                          temperature=temperature, top_p=top_p, seed=seed)
    return collect_rows(_steps(decoder, uids), len(uids))
