"""The 14 hand-tuned tiny architectures (`ARCHITECTURES`): their seeded init (see the package
docstring for what it aims at) and `make_tiny_model`."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes, quantize_model

from mlux.tokenizer_files import SPECIAL_TOKENS

from .tiny_configs import (
    _DEFAULT_KNOBS,
    _GEMMA_TYPES,
    _KNOBS,
    _POST_NORM_TYPES,
    _REFERENCE_WIDTH,
    tiny_config,
)

__all__ = ["make_tiny_model"]


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
