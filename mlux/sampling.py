"""Samplers with their own random key, so a seed reproduces a run without touching MLX's
global RNG (which mlx-lm's samplers use and which cannot be saved and restored)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p, make_sampler

__all__ = ["Sampler", "make_seeded_sampler", "sample_rows"]

Sampler = Callable[[mx.array], mx.array]


def make_seeded_sampler(
    temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None
) -> Sampler:
    """A sampler of log-probabilities `(B, V)` -> tokens `(B,)`: greedy at temperature 0; with a
    seed, each call draws with the next key split off that seed's key."""
    if temperature < 0 or temperature != temperature:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0 or seed is None:
        return make_sampler(temp=temperature, top_p=top_p if top_p < 1 else 0.0)
    state = {"key": mx.random.key(seed)}

    def sampler(logprobs: mx.array) -> mx.array:
        state["key"], key = mx.random.split(state["key"])
        if top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * (1 / temperature), key=key)

    return sampler


def sample_rows(logits: mx.array, samplers: Sequence[Sampler], greedy: bool) -> mx.array:
    """One token per row of `logits` `(B, V)`: argmax for all rows at once when `greedy`, one
    call when every row shares one sampler, else row r drawn by `samplers[r]` (own seed)."""
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if greedy:
        return mx.argmax(logprobs, axis=-1)
    if all(s is samplers[0] for s in samplers):
        return samplers[0](logprobs)
    return mx.concatenate([s(logprobs[r : r + 1]) for r, s in enumerate(samplers)])
