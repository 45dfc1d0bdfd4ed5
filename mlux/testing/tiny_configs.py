"""Configs of tiny random mlx-lm models, one per supported architecture: the field names each
`mlx_lm/models/<type>.py` ModelArgs reads, at test size, plus the init knobs that keep each
architecture's random weights behaving like a language model."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from mlux.tokenizer_files import SPECIAL_TOKENS

__all__ = ["ARCHITECTURES", "BOS_TOKEN_ID", "CHAT_TEMPLATE", "EOS_TOKEN_ID", "tiny_config"]

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
