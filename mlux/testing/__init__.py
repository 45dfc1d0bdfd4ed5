"""Tiny random mlx-lm models, for tests and benchmarks: `tiny_model(model_type)` builds any
module of the installed `mlx_lm.models` from its own `ModelArgs` (`modules.py`, sizes in
`module_configs.py`); the 14 hand-tuned architectures below (`make_tiny_model`) keep their
tuned configs and init. `python -m mlux.testing.coverage` checks mlux on every module.

Nothing here downloads anything: configs are written by hand with the field names each
`mlx_lm/models/<type>.py` ModelArgs reads, models are built through mlx-lm's own class lookup,
and `save_tiny_model` writes a directory that `mlx_lm.load` reads offline.

The weights are seeded random, but not mlx's default init (whose logits are nearly flat, so
greedy decoding repeats one token):

* logits spread over a few units (std ~3) whatever the width;
* the MLPs write much more into the residual stream than the embeddings do, so the next token
  is a random function of the context rather than a copy of the current token (with tied
  embeddings the current token's own logit would otherwise win);
* attention writes enough that earlier tokens change later predictions;
* the unembedding rows of `<pad> <unk> <bos> <eos>` (ids 0-3) are shrunk, so greedy decoding
  never picks them and generation runs to `max_tokens` instead of stopping at `<eos>`.

Like a random Markov chain, a random model still falls into a one- or two-token loop within 12
greedy steps for about 2% of (seed, prompt) pairs.
"""


from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
from mlx_lm.utils import save_config, save_model

from mlux.tokenizer_files import SPECIAL_TOKENS, write_word_tokenizer

from .modules import model_modules, tiny_model, tiny_module_config, unsupported_reason
from .tiny_configs import (
    _ROLE_WORDS,
    ARCHITECTURES,
    BOS_TOKEN_ID,
    CHAT_TEMPLATE,
    EOS_TOKEN_ID,
    tiny_config,
)
from .tokenizer_class import forced_tokenizer_types, keep_declared_tokenizer_class
from .tuned import make_tiny_model

__all__ = [
    "ARCHITECTURES",
    "BOS_TOKEN_ID",
    "CHAT_TEMPLATE",
    "EOS_TOKEN_ID",
    "forced_tokenizer_types",
    "make_tiny_model",
    "model_modules",
    "save_tiny_model",
    "tiny_config",
    "tiny_model",
    "tiny_module_config",
    "tiny_tokenizer_words",
    "unsupported_reason",
]


def tiny_tokenizer_words(vocab_size: int) -> list[str]:
    """The `vocab_size - 4` words that follow `<pad> <unk> <bos> <eos>` in the tiny vocabulary.

    `system user assistant` (ids 4-6, used by `CHAT_TEMPLATE`), then `w7 w8 ...`, so that
    word `w{i}` has token id `i`.
    """
    first = len(SPECIAL_TOKENS) + len(_ROLE_WORDS)
    if vocab_size < first + 1:
        raise ValueError(f"vocab_size must be >= {first + 1}, got {vocab_size}")
    return [*_ROLE_WORDS, *(f"w{i}" for i in range(first, vocab_size))]


def save_tiny_model(
    path: str | Path,
    model_type: str,
    *,
    quantize_bits: int | None = None,
    seed: int = 0,
    group_size: int = 32,
    dtype: mx.Dtype = mx.float32,
    **config_overrides: Any,
) -> Path:
    """Write a tiny model directory that `mlx_lm.load(str(path))` reads offline; return it.

    Weights and config through mlx-lm's own `save_model` / `save_config`, and a word-level
    tokenizer whose vocabulary (`<pad> <unk> <bos> <eos>`, `tiny_tokenizer_words`) matches the
    model's `vocab_size`, with `CHAT_TEMPLATE`.
    """
    out = Path(path)
    if model_type in ARCHITECTURES:
        model, config = make_tiny_model(
            model_type,
            quantize_bits=quantize_bits,
            group_size=group_size,
            seed=seed,
            dtype=dtype,
            **config_overrides,
        )
    else:  # any other mlx-lm module, from its own ModelArgs
        if quantize_bits not in (None, 4) or group_size != 32 or dtype != mx.float32:
            raise ValueError(f"{model_type!r} is built by tiny_model: fp32 or 4-bit with group "
                             "size 32 only")
        model, config = tiny_model(model_type, quantize_bits == 4, seed=seed,
                                   **config_overrides)
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    words = tiny_tokenizer_words(_vocab_size(config))
    write_word_tokenizer(words, out, chat_template=CHAT_TEMPLATE)
    if model_type in forced_tokenizer_types():
        keep_declared_tokenizer_class(out)
    return out


def _vocab_size(config: Mapping[str, Any]) -> int:
    """The vocabulary size a config declares (a wrapper's is in its `text_config`)."""
    for cfg in (config, config.get("text_config") or {}):
        for key in ("vocab_size", "num_vocab"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
    raise ValueError("the config declares no vocab_size")
