"""Batched temperature sampling for the toy model, used by its training report and tests.

Samples many continuations of one prompt as one batch on mlux's decoder (one shared prefill),
which is much faster than calling `mlx_lm.generate` once per sample on a tiny model.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlux.generate import generate_batch
from mlux.model import HookedModel

__all__ = ["sample_continuations"]


def sample_continuations(
    model: nn.Module | HookedModel,
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
    draw reproducible (it reseeds MLX's global generator, so all rows sample in one call).
    """
    hooked = model if isinstance(model, HookedModel) else HookedModel(model, tokenizer)
    if seed is not None:
        mx.random.seed(seed)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    rows = generate_batch(hooked, [ids] * n, max_tokens=max_tokens, temperature=temperature)
    return [tokenizer.decode(row) for row in rows]
