"""Turn user inputs (text, token ids, arrays) into a token batch, left-padded where rows differ.

Padded rows run through mlx-lm's batch caches (`BatchKVCache`), whose masks hide the padding
and whose per-row offsets keep each row's positions as if it ran alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import (
    BatchKVCache,
    BatchRotatingKVCache,
    KVCache,
    RotatingKVCache,
    make_prompt_cache,
)

from .builtin import BUILTIN_MODELS

__all__ = ["Inputs", "RowGroup", "TokenBatch", "encode", "left_pad", "make_batch_cache",
           "to_token_batch", "warn_if_unknown"]

Inputs = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], mx.array]


@dataclass
class TokenBatch:
    """Tokens `(B, T)`, left-padded; `lengths[i]` real tokens in row i."""

    tokens: mx.array
    lengths: list[int]

    @property
    def left_padding(self) -> list[int]:
        width = self.tokens.shape[1]
        return [width - n for n in self.lengths]

    @property
    def is_padded(self) -> bool:
        return any(self.left_padding)


@dataclass
class RowGroup:
    """Rows of a batch that run through the model together: their indices in the batch, their
    tokens `(b, T)`, the cache they run on (None: no cache) and each row's position of column 0
    (minus its left padding)."""

    rows: list[int]
    tokens: mx.array
    cache: Optional[list[Any]]
    start: Union[int, list[int]] = 0


def encode(tokenizer: Any, text: str) -> list[int]:
    if not isinstance(text, str):
        raise ValueError(f"expected a prompt string, got {type(text).__name__}")
    if tokenizer is None:
        raise ValueError("this HookedModel has no tokenizer: pass token ids instead of text")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ValueError(f"prompt {text!r} encodes to no tokens; give a non-empty prompt")
    return ids


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def _check_ids(row: Sequence[Any]) -> list[int]:
    if not row:
        raise ValueError("empty token list: every input row needs at least one token")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
        raise ValueError("token id lists must hold ints")
    return [int(t) for t in row]


def to_token_batch(tokenizer: Any, inputs: Inputs, vocab_size: Optional[int] = None) -> TokenBatch:
    """Normalise any accepted input to a left-padded `TokenBatch`."""
    if isinstance(inputs, mx.array):
        if inputs.ndim == 1:
            inputs = inputs[None]
        if inputs.ndim != 2 or inputs.size == 0:
            raise ValueError(f"token array must have shape (B, T) with T > 0, got {inputs.shape}")
        if not mx.issubdtype(inputs.dtype, mx.integer):
            raise ValueError(f"token array must be integer, got {inputs.dtype}")
        rows = None
        batch = TokenBatch(inputs, [inputs.shape[1]] * inputs.shape[0])
    else:
        if isinstance(inputs, str):
            rows = [encode(tokenizer, inputs)]
        elif isinstance(inputs, Sequence) and len(inputs) == 0:
            raise ValueError("empty input: give a prompt, a list of prompts or token ids")
        elif isinstance(inputs, Sequence) and all(isinstance(x, str) for x in inputs):
            rows = [encode(tokenizer, s) for s in inputs]
        elif isinstance(inputs, Sequence) and all(isinstance(x, int) for x in inputs):
            rows = [_check_ids(inputs)]
        elif isinstance(inputs, Sequence) and all(isinstance(x, (list, tuple)) for x in inputs):
            rows = [_check_ids(r) for r in inputs]
        else:
            raise ValueError(
                "inputs must be a string, a list of strings, a list of token ids, a list of "
                f"token-id lists, or an mx.array of shape (B, T); got {type(inputs).__name__}"
            )
        width = max(len(r) for r in rows)
        pad = _pad_id(tokenizer)
        tokens = mx.array([[pad] * (width - len(r)) + r for r in rows], dtype=mx.int32)
        batch = TokenBatch(tokens, [len(r) for r in rows])
    if vocab_size is not None:
        hi, lo = int(batch.tokens.max().item()), int(batch.tokens.min().item())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token ids must be in 0..{vocab_size - 1}; got {lo}..{hi}")
    return batch


def make_batch_cache(model: nn.Module, left_padding: Sequence[int]) -> Optional[list[Any]]:
    """mlx-lm batch caches for a left-padded batch, or None if a layer's cache can't batch."""
    caches = []
    for c in make_prompt_cache(model):
        if type(c) is KVCache:
            caches.append(BatchKVCache(list(left_padding)))
        elif type(c) is RotatingKVCache and getattr(c, "keep", 0) == 0:
            caches.append(BatchRotatingKVCache(c.max_size, list(left_padding)))
        else:
            return None
    return caches


def left_pad(x: mx.array, width: int) -> mx.array:
    """Zero-pad axis 1 on the left up to `width`."""
    pad = width - x.shape[1]
    if pad <= 0:
        return x
    return mx.concatenate([mx.zeros((x.shape[0], pad, *x.shape[2:]), x.dtype), x], axis=1)


def warn_if_unknown(tokenizer: Any, texts: list[str], batch: TokenBatch,
                    model_id: Optional[str]) -> bool:
    """Warn when a text prompt is mostly the tokenizer's unknown token: the model then sees
    nothing of it and continues from noise, with no error of its own. True if it warned."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = {getattr(tokenizer, k, None) for k in ("eos_token_id", "bos_token_id",
                                                     "pad_token_id")}
    if not isinstance(unk, int) or unk in special:  # e.g. gpt2: <|endoftext|> is all three
        return False
    for text, row, n in zip(texts, batch.tokens.tolist(), batch.lengths, strict=True):
        unknown = row[len(row) - n:].count(unk)
        if unknown * 2 > n:
            hint = (" (the built-in model knows only its synthetic corpus, e.g. "
                    "mlux.toy.TEST_PROMPTS)" if model_id in BUILTIN_MODELS else "")
            warnings.warn(
                f"{unknown} of the {n} tokens of the prompt {text[:60]!r} are unknown to "
                f"{model_id or 'this model'}'s tokenizer (<unk>): the model sees almost "
                f"nothing of it; use words from its vocabulary{hint}", stacklevel=4)
            return True
    return False
