"""Data for tiny random instances of every `mlx_lm.models` module: the small value each common
`ModelArgs` field takes, the per-module overrides where a field has no sensible small default,
and the modules that cannot run a text forward at all, with the reason.

`mlux.testing.modules.tiny_module_config` fills a module's own `ModelArgs` fields from
`SMALL_FIELDS` (only the fields it declares), then applies `MODULE_OVERRIDES[model_type]`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["MODULE_OVERRIDES", "SMALL_FIELDS", "TINY_LAYERS", "UNSUPPORTED_MODULES"]

_H = 64  # residual width
TINY_LAYERS = 4  # enough for every hybrid pattern below to hold both kinds of block
_SLIDING_FULL = ["sliding_attention", "full_attention"] * (TINY_LAYERS // 2)

# Field name -> small value, applied to every module that declares the field. Windows stay
# larger than any test sequence so sliding caches never rotate mid-check.
SMALL_FIELDS: Mapping[str, Any] = MappingProxyType({
    "hidden_size": _H, "n_embd": _H, "d_model": _H, "dim": _H, "model_dim": _H,
    "num_hidden_layers": TINY_LAYERS, "n_layer": TINY_LAYERS, "num_layers": TINY_LAYERS,
    "n_layers": TINY_LAYERS,
    "intermediate_size": 2 * _H, "n_inner": 2 * _H, "ffn_hidden_size": 2 * _H,
    "ff_intermediate_size": 2 * _H, "hidden_dim": 2 * _H,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2,
    "head_dim": 16, "kv_channels": 16,
    "vocab_size": 128, "num_vocab": 128,
    "num_experts": 4, "n_routed_experts": 4, "num_local_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_intermediate_size": 32,
    "expert_ffn_hidden_size": 32, "shared_expert_intermediate_size": 64,
    "moe_shared_expert_intermediate_size": 64, "shared_intermediate_size": 64,
    "n_shared_experts": 1, "num_shared_experts": 1, "num_shared_expert": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "mlp_only_layers": [], "decoder_sparse_step": 1,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "rms_norm_eps": 1e-5, "layer_norm_epsilon": 1e-5, "layer_norm_eps": 1e-5, "norm_eps": 1e-5,
    "layernorm_epsilon": 1e-5,
    "max_position_embeddings": 2048, "n_positions": 2048, "n_ctx": 2048,
    "model_max_length": 2048, "rope_theta": 10000.0,
    "attention_bias": False, "mlp_bias": False, "use_bias": False, "use_qkv_bias": False,
    "tie_word_embeddings": False, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
    "partial_rotary_factor": 0.5, "use_qk_norm": False,
    "sliding_window": 512, "sliding_window_size": 512, "attention_window_size": 512,
    "sliding_window_pattern": 2,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
    "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_n_heads": 8,
    "mamba_d_head": 16, "mamba_num_heads": 8, "mamba_head_dim": 16, "mamba_n_groups": 1,
    "mamba_proj_bias": False, "mamba_conv_bias": True, "mamba_chunk_size": 16,
    "state_size": 16, "ssm_state_size": 16, "conv_kernel": 4, "time_step_rank": 8,
    "n_groups": 1, "use_conv_bias": True, "conv_bias": False, "time_step_limit": [0.0, 1e9],
    "index_head_dim": 16, "index_n_heads": 2, "index_topk": 8,
    "logits_scaling": 1.0, "attention_multiplier": 0.25, "embedding_multiplier": 1.0,
    "residual_multiplier": 1.0,
    "dim_model_base": _H, "scale_depth": 1.0, "scale_emb": 1.0,
})
_ROPE = {"rope_theta": 10000.0, "rope_type": "default"}
_LLAMA4_ROPE = {**_ROPE, "llama_4_scaling_beta": 0.1, "original_max_position_embeddings": 2048}
_GEMMA3N_TEXT = {
    "model_type": "gemma3n_text", "num_kv_shared_layers": 2, "vocab_size_per_layer_input": 128,
    "rope_local_base_freq": 10000.0, "final_logit_softcapping": 30.0,
    "layer_types": _SLIDING_FULL, "activation_sparsity_pattern": [0.95, 0.0, 0.0, 0.0],
    "hidden_size_per_layer_input": 16, "altup_num_inputs": 2, "altup_coef_clip": 120.0,
    "altup_correct_scale": True, "altup_active_idx": 0, "laurel_rank": 8,
}
_GEMMA4_TEXT = {"model_type": "gemma4_text", "num_kv_shared_layers": 2,
                "vocab_size_per_layer_input": 128, "hidden_size_per_layer_input": 16,
                "global_head_dim": 32}
_KDA = {"kda_layers": [1, 3], "full_attn_layers": [2, 4], "num_heads": 4, "head_dim": 16,
        "short_conv_kernel_size": 4}
_LFM2 = {"conv_L_cache": 3, "block_dim": _H, "block_multiple_of": 16,
         "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": False,
         "full_attn_idxs": [1, 3]}

# model_type -> fields set after SMALL_FIELDS (the module's own field names, verbatim).
MODULE_OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "afm7": {"num_kv_reuse_layers": 1},
    "afmoe": {"layer_types": _SLIDING_FULL},
    "apertus": {"post_norm": False, "qk_norm": True},
    "baichuan_m1": {"sliding_window_layers": [0, 2], "conv_window": 2},
    "bailing_hybrid": {"layer_group_size": 2, "group_norm_size": 1},
    "bailing_moe_linear": {"layer_group_size": 2, "group_norm_size": 1},
    "dbrx": {
        "ffn_config": {"ffn_hidden_size": 2 * _H, "moe_num_experts": 4, "moe_top_k": 2},
        "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
    },
    "deepseek_v2": {"rope_scaling": {"factor": 1.0, "mscale_all_dim": 0,
                                     "original_max_position_embeddings": 2048}},
    # transformers' Exaone4Config reads layer_types (mlx-lm reads the pattern string)
    "exaone4": {"sliding_window_pattern": "LG", "rope_scaling": None,
                "layer_types": _SLIDING_FULL},
    "falcon_h1": {"mamba_d_ssm": 128},
    "gemma3": {"text_config": {"model_type": "gemma3_text"}},
    "gemma3n": {"text_config": _GEMMA3N_TEXT},
    "gemma4": {"text_config": _GEMMA4_TEXT},
    "gemma4_text": _GEMMA4_TEXT,
    "glm4_moe": {"rope_scaling": None},
    "gptj": {"rotary_dim": 8},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"] * (TINY_LAYERS // 2)},
    "exaone_moe": {"layer_types": _SLIDING_FULL, "is_moe_layer": [False, True, True, True]},
    "gear": {"layer_types": _SLIDING_FULL},
    "glm_moe_dsa": {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "moe_layer_freq": 1,
                    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}},
    "gpt_neox": {"rotary_emb_base": 10000.0, "rotary_pct": 0.25},
    "hunyuan": {"use_mixed_mlp_moe": True, "use_cla": False, "cla_share_factor": 1,
                "rope_scaling": {"alpha": 1.0, "factor": 1.0, "type": "dynamic"}},
    "jamba": {"attn_layer_offset": 1, "attn_layer_period": 2, "expert_layer_offset": 1,
              "expert_layer_period": 2},
    "kimi_linear": {"linear_attn_config": _KDA},
    "lfm2": _LFM2,
    "lfm2-vl": {"text_config": {"model_type": "lfm2", **_LFM2}},
    "lfm2_moe": {"use_expert_bias": True, "num_dense_layers": 1, "conv_L_cache": 3,
                 "full_attn_idxs": [1, 3]},
    "lille-130m": {"block_size": 2048},
    "llama4_text": {"intermediate_size_mlp": 2 * _H, "no_rope_layers": [1, 1, 1, 0]},
    "longcat_flash": {"attention_method": "MLA", "zero_expert_type": "identity",
                      "zero_expert_num": 1, "mla_scale_q_lora": True, "mla_scale_kv_lora": True},
    "longcat_flash_ngram": {"zero_expert_num": 1, "mla_scale_q_lora": True,
                            "mla_scale_kv_lora": True},
    "llama4": {"text_config": {"model_type": "llama4_text", "attention_chunk_size": 512,
                               "interleave_moe_layer_step": 2, "intermediate_size_mlp": 2 * _H,
                               "num_experts_per_tok": 1,
                               "rope_scaling": None, "use_qk_norm": True}},
    "mamba2": {"num_heads": 8},
    "mellum": {"layer_types": _SLIDING_FULL,
               "rope_parameters": {"sliding_attention": _ROPE, "full_attention": _ROPE}},
    "minicpm3": {"rope_scaling": {"original_max_position_embeddings": 2048}},
    "ministral3": {"rope_parameters": _LLAMA4_ROPE},
    "mistral3": {"text_config": {"model_type": "ministral3", "rope_parameters": _LLAMA4_ROPE}},
    "mistral4": {"rope_parameters": _LLAMA4_ROPE},
    "nemotron": {"hidden_act": "relu2"},
    "nemotron-nas": {"block_configs": [
        {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 2.0}},
        {"attention": {"no_op": True}, "ffn": {"ffn_mult": 2.0}},
        {"attention": {"replace_with_linear": True}, "ffn": {"ffn_mult": 2.0}},
        {"attention": {"n_heads_in_group": 2}, "ffn": {"no_op": True}},
    ]},
    "mimo_v2_flash": {"hybrid_layer_pattern": [1, 0, 1, 0], "moe_layer_freq": [0, 1, 1, 1],
                      "add_swa_attention_sink_bias": True, "add_full_attention_sink_bias": False,
                      "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                      "swa_rope_theta": 10000.0, "swa_num_attention_heads": 4,
                      "swa_num_key_value_heads": 2, "swa_head_dim": 16, "swa_v_head_dim": 16,
                      "v_head_dim": 16, "partial_rotary_factor": 0.5},
    "minimax": {"rotary_dim": 8},
    "muse_spark": {"text_config": {"post_norm_eps": 1e-5, "rope_parameters": _ROPE,
                                   "layer_rope_theta": [10000.0, 0.0] * (TINY_LAYERS // 2),
                                   "layer_types": _SLIDING_FULL,
                                   "final_logit_softcapping": 30.0, "output_multiplier": 1.0,
                                   "moe_hidden_size": 32, "num_shared_experts": 0}},
    "nemotron_h": {"hybrid_override_pattern": "M*ME"},
    "olmo3": {"layer_types": _SLIDING_FULL},
    "olmo_hybrid": {"linear_allow_neg_eigval": True},
    "openelm": {"num_transformer_layers": TINY_LAYERS, "ffn_dim_divisor": 16,
                "num_query_heads": [4] * TINY_LAYERS, "num_kv_heads": [2] * TINY_LAYERS,
                "ffn_multipliers": [2.0] * TINY_LAYERS},
    "phixtral": {"rotary_dim": 8},
    "phi3small": {"dense_attention_every_n_layers": 2, "gegelu_limit": 20.0},
    "rwkv7": {"a_low_rank_dim": 16, "v_low_rank_dim": 16, "gate_low_rank_dim": 16,
              "decay_low_rank_dim": 16},
    "step3p5": {"num_attention_groups": 2, "moe_num_experts": 4, "moe_top_k": 2},
    "kimi_k3": {"text_config": {"model_type": "kimi_linear", "hidden_act": "situ",
                                "num_experts_per_token": 2,
                                "linear_attn_config": _KDA}},
    "plamo": {"n_shared_head": 2},
    "pixtral": {"text_config": {"model_type": "llama"}},
    "qwen2_vl": {"text_config": {"model_type": "qwen2"}},
    "qwen3_vl": {"text_config": {"model_type": "qwen3"}},
    "qwen3_vl_moe": {"text_config": {"model_type": "qwen3_moe"}},
    "recurrent_gemma": {"conv1d_width": 4, "logits_soft_cap": 30.0,
                        "block_types": ["recurrent", "attention"]},
    "spark2_5": {"rope_parameters": {"sliding_attention": _ROPE, "full_attention": _ROPE}},
})

# model_type -> why no tiny instance can run a text forward (listed in the table, never hidden).
UNSUPPORTED_MODULES: Mapping[str, str] = MappingProxyType({
    "bitnet": "its BitLinear layers run a Metal kernel; the CPU build of MLX has none",
    "phi3small": "the interpreter segfaults (a native crash inside MLX) on its first forward "
                 "with a KV cache (mlx 0.32.4 CPU build); its uncached forward runs",
    "prism_hadamard_qwen35": "a Hadamard-rotated 2-bit weight pack of qwen3_5: its ModelArgs "
                             "refuse anything but the packed checkpoint's quantization",
    "muse_spark": "its attention runs a fused qk-norm + RoPE Metal kernel; the CPU build of MLX "
                  "has none",
    "olmo": "imports the `ai2-olmo` package (hf_olmo), which mlx-lm does not install",
})
