"""Turn user inputs (text, token ids, arrays) into a token batch, left-padded where rows differ.

Padded rows run through mlx-lm's batch caches (`BatchKVCache`), whose masks hide the padding
and whose per-row offsets keep each row's positions as if it ran alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import (
    ArraysCache,
    BatchKVCache,
    BatchRotatingKVCache,
    CacheList,
    KVCache,
    RotatingKVCache,
    make_prompt_cache,
)

from .builtin import BUILTIN_MODELS

__all__ = ["Inputs", "RowGroup", "TokenBatch", "batch_cache_blockers", "chat_ids", "encode",
           "left_pad", "make_batch_cache", "padded_batch_problem", "to_token_batch",
           "warn_if_unknown"]

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
    caches = [_batch_form(c, list(left_padding)) for c in make_prompt_cache(model)]
    return None if any(c is None for c in caches) else caches


def batch_cache_blockers(model: nn.Module) -> list[str]:
    """The cache types of `model`'s layers that have no batch form in mlx-lm (why a padded
    batch runs row by row); empty if every layer's cache can batch."""
    return sorted({type(c).__name__ for c in make_prompt_cache(model)
                   if _batch_form(c, [0]) is None})


def _batch_form(cache: Any, left_padding: list[int]) -> Any:
    """The batch version of one layer's plain cache (KV, rotating KV, SSM/conv arrays, or a
    list of those), or None."""
    if type(cache) is KVCache:
        return BatchKVCache(left_padding)
    if type(cache) is RotatingKVCache and getattr(cache, "keep", 0) == 0:
        return BatchRotatingKVCache(cache.max_size, left_padding)
    if type(cache) is ArraysCache:  # state-space / conv state; masks its padded steps
        return ArraysCache(len(cache.cache), left_padding=left_padding)
    if type(cache) is CacheList:
        parts = [_batch_form(c, left_padding) for c in cache.caches]
        return None if any(p is None for p in parts) else CacheList(*parts)
    return None


def padded_batch_problem(model: nn.Module) -> Optional[str]:
    """Why `model` can't run left-padded rows exactly as it runs each row alone, or None if it
    can: three rows of different lengths, batched and one by one (some mlx-lm models fail on
    batch masks, a few broadcast them wrongly without failing). Run it with hooks suspended."""
    rows = [[1], [2, 1], [0, 2, 1]]
    caches = make_batch_cache(model, [2, 1, 0])
    if caches is None:
        blockers = ", ".join(batch_cache_blockers(model))
        return f"its layer caches ({blockers}) have no batch form in mlx-lm"
    tokens = mx.array([[0, 0, 1], [0, 2, 1], [0, 2, 1]])
    try:
        # one forward evaluated at a time: a sharded model's collectives then run in the same
        # order on every rank
        batched = model(tokens, cache=caches)[:, -1]
        mx.eval(batched)
        alone = []
        for r in rows:
            alone.append(model(mx.array([r]))[0, -1])
            mx.eval(alone[-1])
    except Exception as e:  # e.g. positions built with numpy from the cache offset
        return f"a padded batch fails: {type(e).__name__}: {str(e)[:160]}"
    if all(mx.allclose(batched[i], a, rtol=1e-2, atol=1e-2).item()
           for i, a in enumerate(alone)):
        return None
    return "a padded batch differs from its rows alone"


def chat_ids(tokenizer: Any, messages: Union[str, Sequence[Mapping[str, str]]],
             model_id: Optional[str] = None) -> list[int]:
    """Token ids of a chat ready for the assistant's turn, straight from the tokenizer's
    `apply_chat_template` (`HookedModel.encode_chat`, the one chat route)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not messages or not all(isinstance(m, Mapping) and isinstance(m.get("role"), str)
                               and isinstance(m.get("content"), str) for m in messages):
        raise ValueError("a chat is a prompt string or a non-empty list of {role, content} "
                         "strings")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"chat formatting asked for, but the tokenizer of {model_id!r} has no "
                         "chat template")
    ids: Any = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    if not ids:
        raise ValueError("the chat template rendered no tokens")
    return [int(i) for i in ids]


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
