"""Batched generation: many rows decoded together, each with its own steering.

Thin layers on the one decoder (`mlux.decode.Decoder`): rows are left-padded into mlx-lm's batch
caches, whose masks hide the padding and whose per-row offsets give each row the positions it
would have alone, so row i of a batch yields the tokens generating row i alone would (greedy).
Architectures that can't run padded batches decode row by row inside the decoder.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

from .decode import PREFILL_CHUNK, Decoder
from .model import HookedModel, HookSpec
from .rows import RowSteering, Steering, row_steering_hooks

__all__ = [
    "RowSteering",
    "Steering",
    "collect_rows",
    "generate_batch",
    "row_steering_hooks",
    "stream_rows",
]


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
