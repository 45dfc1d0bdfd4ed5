"""Tiny random mlx-lm models of every architecture mlux supports, for tests and benchmarks.

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
import json
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

from mlux.tokenizer_files import SPECIAL_TOKENS, write_word_tokenizer

__all__ = [
    "ARCHITECTURES",
    "BOS_TOKEN_ID",
    "CHAT_TEMPLATE",
    "EOS_TOKEN_ID",
    "make_tiny_model",
    "save_tiny_model",
    "tiny_config",
    "tiny_tokenizer_words",
]

ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_bigcode",
    "starcoder2",
    "olmo2",
    "cohere",
)

BOS_TOKEN_ID = 2
EOS_TOKEN_ID = 3

# Role words come right after the special tokens so the chat template tokenizes without <unk>.
_ROLE_WORDS = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<bos> {{ message['role'] }} {{ message['content'] }} <eos> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<bos> assistant {% endif %}"
)

# Model types for which transformers 5's AutoTokenizer overrides the declared tokenizer class.
_FORCED_TOKENIZER_TYPES = frozenset({"qwen2"})

_NUM_HEADS = 4
_NUM_KV_HEADS = 2
# Width at which the init gains below hold exactly; see `_init_weights`.
_REFERENCE_WIDTH = 64

# Gemma's RMSNorm multiplies by (1 + weight), so its neutral weight is 0, not 1; Gemma also
# multiplies the embeddings by sqrt(hidden_size).
_GEMMA_TYPES = frozenset({"gemma", "gemma2", "gemma3_text"})
# Architectures whose `post_attention_layernorm` / `post_feedforward_layernorm` normalise the
# sublayer *outputs* (elsewhere `post_attention_layernorm` is the pre-MLP norm).
_POST_NORM_TYPES = frozenset({"gemma2", "gemma3_text", "olmo2"})

# Init knobs, tuned by measuring greedy decoding over many seeds and prompts, fp32 and 4-bit:
#   logit:     target std of the logits
#   embed:     per-dimension std of an untied model's input embeddings
#   pos_embed: std of learned position embeddings, relative to the token embeddings
#   attn_gain, mlp_gain: per-dimension size of each attention / MLP output relative to the
#              embeddings (set on the output norms where those exist; with tied embeddings
#              it grows like sqrt(width / 64), see `_init_weights`)
#   norm_noise: relative spread of norm gains around their target
_DEFAULT_KNOBS: Mapping[str, float] = MappingProxyType(
    {
        "logit": 3.0,
        "embed": 1.0,
        "pos_embed": 0.5,
        "attn_gain": 4.0,
        "mlp_gain": 64.0,
        "norm_noise": 0.1,
    }
)
_KNOBS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        # Learned-position / GELU models fall into repetition loops with stronger attention.
        "gpt2": MappingProxyType({"attn_gain": 2.0}),
        "gpt_bigcode": MappingProxyType({"attn_gain": 2.0}),
        "starcoder2": MappingProxyType({"attn_gain": 2.0}),
        # Parallel blocks: the MLP never sees this layer's attention output, so attention
        # must be large itself for the context to matter.
        "cohere": MappingProxyType({"attn_gain": 32.0}),
        # No pre-norms: the sublayers read the raw residual stream, whose size must stay
        # small enough for float16 activations.
        "olmo2": MappingProxyType({"attn_gain": 1.0, "mlp_gain": 4.0}),
    }
)


def _check_type(model_type: str) -> None:
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unknown model_type {model_type!r}; expected one of: {', '.join(ARCHITECTURES)}"
        )


def tiny_config(
    model_type: str,
    *,
    hidden_size: int = 64,
    num_layers: int = 4,
    vocab_size: int = 64,
    **overrides: Any,
) -> dict[str, Any]:
    """Return a small, valid mlx-lm `config.json` dict for `model_type`.

    4 query heads (2 key/value heads where the architecture has grouped-query attention, 1
    for gpt_bigcode's multi-query), head_dim `hidden_size // 4`, MLP width `2 * hidden_size`
    (gpt2: fixed at 4x by mlx-lm; qwen3_moe: 4 experts of width `hidden_size`, top-2, every
    layer sparse). `overrides` use the architecture's own field names and are applied last,
    verbatim.
    """
    _check_type(model_type)
    if hidden_size % (2 * _NUM_HEADS) != 0:
        raise ValueError(f"hidden_size must be a multiple of {2 * _NUM_HEADS}, got {hidden_size}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    min_vocab = len(SPECIAL_TOKENS) + len(_ROLE_WORDS) + 1
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be >= {min_vocab}, got {vocab_size}")
    h, n = hidden_size, num_layers
    head_dim = h // _NUM_HEADS
    common: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
    }
    # Llama-style field names, shared by most architectures.
    llama_like: dict[str, Any] = {
        "hidden_size": h,
        "num_hidden_layers": n,
        "intermediate_size": 2 * h,
        "num_attention_heads": _NUM_HEADS,
        "num_key_value_heads": _NUM_KV_HEADS,
    }
    cfg: dict[str, Any]
    if model_type in ("llama", "mistral"):
        cfg = {
            **llama_like,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
        }
        if model_type == "mistral":
            # mlx-lm runs mistral with the llama module, which only windows layers listed in
            # `layer_types`; null is what Mistral-7B-v0.3 ships.
            cfg.update(sliding_window=None, rope_theta=1000000.0)
    elif model_type == "qwen2":
        cfg = {
            **llama_like,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
        }
    elif model_type in ("qwen3", "qwen3_moe"):
        cfg = {
            **llama_like,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": model_type == "qwen3",
        }
        if model_type == "qwen3_moe":
            cfg.update(
                num_experts=4,
                num_experts_per_tok=2,
                decoder_sparse_step=1,  # with no mlp_only_layers: every layer is sparse
                mlp_only_layers=[],
                moe_intermediate_size=h,
                norm_topk_prob=True,
            )
    elif model_type in _GEMMA_TYPES:
        # mlx-lm's gemma models always tie the embeddings; the field is for readers.
        cfg = {
            **llama_like,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
        }
        if model_type == "gemma2":
            # mlx-lm's gemma2 reads no window (every layer attends globally); the field is
            # kept so the config reads like a real one.
            cfg.update(
                query_pre_attn_scalar=head_dim,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                sliding_window=512,
            )
        elif model_type == "gemma3_text":
            # Window >= 512 so test sequences (< 200 tokens) never rotate the sliding caches;
            # pattern 2 makes layers 0, 2, ... sliding and 1, 3, ... global.
            cfg.update(
                query_pre_attn_scalar=head_dim,
                rope_theta=1000000.0,
                rope_local_base_freq=10000.0,
                sliding_window=512,
                sliding_window_pattern=2 if n >= 2 else 1,
                rope_scaling=None,
            )
    elif model_type == "phi3":
        cfg = {
            **llama_like,
            "max_position_embeddings": 2048,
            "original_max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "tie_word_embeddings": False,
        }
    elif model_type == "gpt2":
        cfg = {
            "n_embd": h,
            "n_layer": n,
            "n_head": _NUM_HEADS,
            "n_ctx": 1024,
            "n_positions": 1024,
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True,  # always tied in mlx-lm
        }
    elif model_type == "gpt_bigcode":
        cfg = {
            "n_embd": h,
            "n_layer": n,
            "n_inner": 2 * h,
            "n_head": _NUM_HEADS,
            "n_positions": 1024,
            "layer_norm_epsilon": 1e-5,
            "multi_query": True,  # one shared key/value head, as in SantaCoder/StarCoder
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
        }
    elif model_type == "starcoder2":
        cfg = {
            **llama_like,
            "norm_epsilon": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
        }
    elif model_type == "olmo2":
        cfg = {
            **llama_like,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
        }
    else:  # cohere
        cfg = {
            **llama_like,
            "layer_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "logit_scale": 0.0625,
            "use_qk_norm": False,
            "layer_norm_bias": False,
            "attention_bias": False,
            "tie_word_embeddings": True,  # always tied in mlx-lm
        }
    return {**common, **cfg, **overrides}


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
    model, config = make_tiny_model(
        model_type,
        quantize_bits=quantize_bits,
        group_size=group_size,
        seed=seed,
        dtype=dtype,
        **config_overrides,
    )
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    words = tiny_tokenizer_words(int(config["vocab_size"]))
    write_word_tokenizer(words, out, chat_template=CHAT_TEMPLATE)
    if model_type in _FORCED_TOKENIZER_TYPES:
        _keep_declared_tokenizer_class(out / "tokenizer_config.json")
    return out


def _keep_declared_tokenizer_class(tokenizer_config: Path) -> None:
    """Make transformers >= 5 load the word-level `tokenizer.json` as written.

    For some model types transformers 5 ignores `tokenizer_class` and forces its own class;
    for qwen2 that is `Qwen2Tokenizer`, which rebuilds a byte-level BPE from the vocabulary
    and so encodes every word to nothing. Declaring an `auto_map` makes it skip that override;
    it then also skips the (never trusted) remote code for these model types and falls back
    to the declared `tokenizer_class`. transformers 4 honours `tokenizer_class` either way.
    """
    data = json.loads(tokenizer_config.read_text())
    declared = data["tokenizer_class"]
    data["auto_map"] = {"AutoTokenizer": [None, declared]}
    tokenizer_config.write_text(json.dumps(data, indent=2))
