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

import contextlib
import io
import math
from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

from mlux.tokenizer_files import SPECIAL_TOKENS, write_word_tokenizer

from .modules import model_modules, tiny_model, tiny_module_config, unsupported_reason
from .tiny_configs import (
    _DEFAULT_KNOBS,
    _GEMMA_TYPES,
    _KNOBS,
    _POST_NORM_TYPES,
    _REFERENCE_WIDTH,
    _ROLE_WORDS,
    ARCHITECTURES,
    BOS_TOKEN_ID,
    CHAT_TEMPLATE,
    EOS_TOKEN_ID,
    tiny_config,
)
from .tokenizer_class import forced_tokenizer_types, keep_declared_tokenizer_class

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


def _role(model_type: str, module_path: str, leaf: str, module: nn.Module) -> str:
    """Classify one parameter (`module_path.leaf`) for `_init_weights`."""
    name = module_path.rpartition(".")[2]
    parent = module_path.rpartition(".")[0].rpartition(".")[2]
    if isinstance(module, nn.Embedding):
        return "pos_embed" if name == "wpe" else "embed"
    if name == "lm_head":
        return "unembed"
    if "norm" in type(module).__name__.lower() or "norm" in name or name.startswith("ln_"):
        if leaf != "weight":
            return "bias"
        if model_type in _POST_NORM_TYPES and name == "post_attention_layernorm":
            return "attn_post_norm"
        if model_type in _POST_NORM_TYPES and name == "post_feedforward_layernorm":
            return "mlp_post_norm"
        return "norm"
    if leaf == "bias":
        return "bias"
    if name == "o_proj" or (name == "c_proj" and parent == "attn"):
        return "attn_out"
    if name == "down_proj" or (name == "c_proj" and parent == "mlp"):
        return "mlp_out"
    return "linear"


def _init_weights(model: nn.Module, config: Mapping[str, Any], seed: int) -> dict[str, mx.array]:
    """A seeded fp32 value for every parameter of `model`, keyed by its flat path."""
    model_type = config["model_type"]
    knobs = {**_DEFAULT_KNOBS, **_KNOBS.get(model_type, {})}
    hidden = int(config.get("hidden_size", config.get("n_embd", 0)))
    tied = "lm_head" not in model
    if model_type == "gemma3_text":
        # Built with an lm_head; `sanitize` drops it when no lm_head weight is given.
        tied = bool(config.get("tie_word_embeddings", True))
    gemma = model_type in _GEMMA_TYPES
    post_norm = model_type in _POST_NORM_TYPES  # the output norms set the sublayer sizes
    norm_offset = 1.0 if gemma else 0.0
    embed_mult = math.sqrt(hidden) if gemma else 1.0
    logit_scale = float(config.get("logit_scale", 1.0))
    # Per-dimension size of the embeddings entering layer 0, and the unit of the sublayer
    # output sizes.
    resid0 = knobs["embed"]
    out_scale = resid0
    if tied:
        # The same matrix unembeds, so the logit target sets its size. A token's own logit
        # then grows like sqrt(width) against the others; sublayer outputs grow by the same
        # factor to keep that balance at every width.
        resid0 = knobs["logit"] * embed_mult / (math.sqrt(hidden) * logit_scale)
        out_scale = resid0 * math.sqrt(hidden / _REFERENCE_WIDTH)
    attn_size = knobs["attn_gain"] * out_scale
    mlp_size = knobs["mlp_gain"] * out_scale

    modules = dict(model.named_modules())
    params = sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])
    keys = mx.random.split(mx.random.key(seed), len(params))
    out: dict[str, mx.array] = {}
    for (name, p), key in zip(params, keys, strict=True):
        module_path, _, leaf = name.rpartition(".")
        role = _role(model_type, module_path, leaf, modules[module_path])
        noise = mx.random.normal(p.shape, key=key)
        fan_in = p.shape[-1]
        if role in ("norm", "attn_post_norm", "mlp_post_norm"):
            gain = {"norm": 1.0, "attn_post_norm": attn_size, "mlp_post_norm": mlp_size}[role]
            out[name] = gain * (1.0 + knobs["norm_noise"] * noise) - norm_offset
            continue
        if role == "embed":
            std = resid0 / embed_mult
        elif role == "pos_embed":
            std = knobs["pos_embed"] * resid0
        elif role == "unembed":
            std = knobs["logit"] / (math.sqrt(fan_in) * logit_scale)
        elif role == "bias":
            std = 0.05
        elif role == "attn_out" and not post_norm:
            std = attn_size / math.sqrt(fan_in)
        elif role == "mlp_out" and not post_norm:
            std = mlp_size / math.sqrt(fan_in)
        else:
            std = 1.0 / math.sqrt(fan_in)
        w = noise * std
        if role == "mlp_out":
            # GELU activations have a positive mean, so an uncentred output projection adds
            # the same vector at every position and one token wins the argmax everywhere.
            w = w - w.mean(axis=-1, keepdims=True)
        if role == "unembed" or (role == "embed" and tied):
            # Special tokens' logits sit near 0, below the best ordinary token.
            n_special = len(SPECIAL_TOKENS)
            w = mx.concatenate([w[:n_special] * 0.05, w[n_special:]], axis=0)
        out[name] = w
    if tied:
        # gemma3_text builds an lm_head and drops it in `sanitize` when no weight is given.
        out.pop("lm_head.weight", None)
    return out


def make_tiny_model(
    model_type: str,
    *,
    quantize_bits: int | None = None,
    group_size: int = 32,
    seed: int = 0,
    dtype: mx.Dtype = mx.float32,
    **config_overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a seeded random mlx-lm model of `model_type`; return `(model, config)`.

    `config_overrides` go to `tiny_config` (`hidden_size`, `num_layers`, `vocab_size` or any
    architecture field). With `quantize_bits` the model is quantized by mlx-lm's own
    `quantize_model` (layers whose input width is not a multiple of `group_size` stay
    unquantized), and the returned config carries its `quantization` entry. The same
    arguments always give the same weights.
    """
    config = tiny_config(model_type, **config_overrides)
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    weights = _init_weights(model, config, seed)
    # The same path as mlx_lm.load: sanitize (gemma3_text ties its embeddings here), then a
    # strict load, so a missing or extra weight fails loudly.
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    if quantize_bits is not None:
        # quantize_model prints a bits-per-weight line that tests do not want.
        with contextlib.redirect_stdout(io.StringIO()):
            model, config = quantize_model(model, config, group_size, quantize_bits)
    model.eval()
    mx.eval(model.parameters())
    return model, config


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
