"""Batched temperature sampling for the toy model, used by its training report and tests.

Samples many continuations of one prompt in a single batch (one KV cache), which is much faster
than calling `mlx_lm.generate` once per sample on a tiny model.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

__all__ = ["sample_continuations"]


def sample_continuations(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    n: int,
    *,
    max_tokens: int = 30,
    temperature: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """Sample `n` continuations of `prompt` (text after the prompt, cut at `<eos>`).

    `tokenizer` is an `mlx_lm` TokenizerWrapper or a Hugging Face tokenizer; `seed` makes the
    draw reproducible (it reseeds MLX's global generator).
    """
    if seed is not None:
        mx.random.seed(seed)
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    cache = make_prompt_cache(model)
    x = mx.array([ids] * n)
    out: list[mx.array] = []
    done = mx.zeros((n,), dtype=mx.bool_)
    for _ in range(max_tokens):
        logits = model(x, cache=cache)[:, -1, :].astype(mx.float32)
        if temperature <= 0:
            tok = mx.argmax(logits, axis=-1)
        else:
            tok = mx.random.categorical(logits / temperature)
        tok = mx.where(done, eos, tok)  # finished rows keep emitting <eos>
        done = done | (tok == eos)
        out.append(tok)
        x = tok[:, None]
        mx.eval(x, done)
        if done.all().item():
            break
    rows = mx.stack(out, axis=1).tolist()
    texts = []
    for row in rows:
        row = row[: row.index(eos)] if eos in row else row
        texts.append(tokenizer.decode(row))
    return texts
