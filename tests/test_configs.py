"""Model configs: the pre-configured table, quantized-id lookup and structural inference."""

from __future__ import annotations

import pytest

from mlux import MODEL_CONFIGS, HookedModel, get_model_config, infer_model_config
from mlux.model_configs import BEHAVIORS, ModelConfig, estimate_memory
from mlux.testing import make_tiny_model


@pytest.mark.parametrize(
    ("name", "layers", "hidden", "refusal"),
    [
        ("Qwen/Qwen3-4B", 36, 2560, [14, 15, 16, 17, 18]),
        ("Qwen/Qwen3-8B", 36, 4096, [14, 15, 16, 17, 18]),
        ("Qwen/Qwen3-14B", 48, 5120, [20, 21, 22, 23, 24]),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 48, 5120, [20, 21, 22, 23, 24]),
        ("meta-llama/Llama-3.1-8B-Instruct", 32, 4096, [14, 15, 16]),
        ("meta-llama/Llama-3.1-70B-Instruct", 80, 8192, list(range(35, 41))),
        ("mistralai/Mistral-7B-Instruct-v0.2", 32, 4096, list(range(12, 21))),
        ("mistralai/Mistral-7B-Instruct-v0.3", 32, 4096, list(range(12, 21))),
        ("google/gemma-2-9b-it", 42, 3584, list(range(14, 23))),
        ("mlx-community/gemma-2-2b-it-4bit", 26, 2304, list(range(16, 21))),
    ],
)
def test_preconfigured(name, layers, hidden, refusal):
    cfg = MODEL_CONFIGS[name]
    assert (cfg.num_layers, cfg.hidden_size) == (layers, hidden)
    assert cfg.get_recommended_layers("refusal") == refusal
    for behavior in BEHAVIORS:
        assert all(0 <= i < layers for i in cfg.get_recommended_layers(behavior))


def test_mlx_community_start_models():
    assert MODEL_CONFIGS["mlx-community/Llama-3.2-3B-Instruct-4bit"].num_layers == 28
    assert MODEL_CONFIGS["mlx-community/Llama-3.2-3B-Instruct-4bit"].hidden_size == 3072
    assert MODEL_CONFIGS["mlx-community/Qwen2.5-3B-Instruct-4bit"].num_layers == 36


@pytest.mark.parametrize(
    ("quantized_id", "base"),
    [
        ("mlx-community/Qwen3-4B-4bit", "Qwen/Qwen3-4B"),
        ("mlx-community/Qwen3-14B-8bit", "Qwen/Qwen3-14B"),
        ("mlx-community/Meta-Llama-3.1-8B-Instruct-4bit", "meta-llama/Llama-3.1-8B-Instruct"),
        ("mlx-community/Mistral-7B-Instruct-v0.3-4bit", "mistralai/Mistral-7B-Instruct-v0.3"),
        ("mlx-community/gemma-2-9b-it-8bit", "google/gemma-2-9b-it"),
        ("qwen/qwen3-8b", "Qwen/Qwen3-8B"),
    ],
)
def test_quantized_ids_find_their_base(quantized_id, base):
    assert get_model_config(quantized_id) is MODEL_CONFIGS[base]


def test_unknown_name_is_none():
    assert get_model_config("someone/unknown-model-4bit") is None


def test_unknown_behavior_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown behaviour 'sarcasm'.*refusal.*uncertainty"):
        MODEL_CONFIGS["Qwen/Qwen3-4B"].get_recommended_layers("sarcasm")


def test_infer_from_structure_middle_third():
    model, _ = make_tiny_model("llama", num_layers=9)
    for target in (model, HookedModel(model, None)):
        cfg = infer_model_config(target)
        assert (cfg.num_layers, cfg.hidden_size) == (9, 64)
        assert cfg.get_recommended_layers("refusal") == [3, 4, 5]


def test_known_name_with_mismatched_structure_is_inferred():
    model, _ = make_tiny_model("qwen3", num_layers=6)
    with pytest.warns(UserWarning, match="says 36 layers"):
        cfg = infer_model_config(HookedModel(model, None, model_id="Qwen/Qwen3-4B"))
    assert cfg.num_layers == 6


def test_memory_estimate():
    cfg = ModelConfig("x", num_layers=10, hidden_size=100, num_parameters=1_000_000)
    est = estimate_memory(cfg, bits=16, num_hook_points=10, num_tokens=50)
    assert est.weights_bytes == 2_000_000
    assert est.activation_bytes_per_token_per_point == 400
    assert est.activation_bytes == 400 * 10 * 50
    assert estimate_memory(cfg, bits=4).weights_bytes < est.weights_bytes / 3
