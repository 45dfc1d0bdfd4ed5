"""Tests for `mlux.testing`: tiny random mlx-lm models of every supported architecture."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache, RotatingKVCache

from mlux.testing import (
    ARCHITECTURES,
    EOS_TOKEN_ID,
    make_tiny_model,
    save_tiny_model,
    tiny_config,
    tiny_tokenizer_words,
)

VOCAB = 64
PROMPTS = [
    [7, 8, 9, 10, 11],
    [10, 20, 30, 40, 50],
    [12, 13, 14, 15, 16],
    [20, 5, 33, 40, 12],
    [63, 62, 61, 60, 59],
    [4, 5, 6, 60, 61],
    [30, 31, 32, 33, 34],
    [9, 19, 29, 39, 49],
]
CASES = [
    pytest.param(arch, bits, id=f"{arch}-{'fp32' if bits is None else f'q{bits}'}")
    for arch in ARCHITECTURES
    for bits in (None, 4)
]


def _batch() -> mx.array:
    return mx.array(np.random.default_rng(0).integers(0, VOCAB, size=(2, 7)), dtype=mx.int32)


def _params(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


def test_architectures() -> None:
    assert len(ARCHITECTURES) == 14
    assert len(set(ARCHITECTURES)) == 14
    assert "mistral" in ARCHITECTURES and "gemma3_text" in ARCHITECTURES


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_config_is_plain_json(model_type: str) -> None:
    config = tiny_config(model_type)
    assert json.loads(json.dumps(config)) == config
    assert config["model_type"] == model_type
    assert config["vocab_size"] == VOCAB
    assert config["eos_token_id"] == EOS_TOKEN_ID
    assert tiny_config(model_type, vocab_size=80)["vocab_size"] == 80


@pytest.mark.parametrize(("model_type", "bits"), CASES)
def test_forward(model_type: str, bits: int | None) -> None:
    model, config = make_tiny_model(model_type, quantize_bits=bits)
    logits = model(_batch())
    assert logits.shape == (2, 7, VOCAB)
    assert logits.dtype == mx.float32
    assert bool(mx.isfinite(logits).all())
    # Non-degenerate: logits spread over a few units, not mlx's near-flat default init.
    assert float(logits.std(axis=-1).mean()) > 1.0
    quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    if bits is None:
        assert not quantized
        assert "quantization" not in config
    else:
        assert quantized
        assert config["quantization"]["bits"] == bits
        assert config["quantization"]["group_size"] == 32


@pytest.mark.parametrize(("model_type", "bits"), CASES)
def test_saved_model_loads_and_generates(
    tmp_path: pytest.TempPathFactory, model_type: str, bits: int | None
) -> None:
    path = save_tiny_model(tmp_path / model_type, model_type, quantize_bits=bits)
    model, tokenizer = mlx_lm.load(str(path))
    assert tokenizer.vocab_size == VOCAB
    assert tokenizer.eos_token_id == EOS_TOKEN_ID

    # The loaded model is the one that was built.
    built, _ = make_tiny_model(model_type, quantize_bits=bits)
    assert mx.allclose(model(_batch()), built(_batch()), atol=1e-4).item()

    text = mlx_lm.generate(model, tokenizer, "w10 w20 w30 w40 w50", max_tokens=12)
    words = text.split()
    assert len(words) == 12, text  # ran to max_tokens: no early <eos>
    assert len(set(words)) >= 3, text

    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "w9 w10"}], add_generation_prompt=True
    )
    assert 1 not in chat  # no <unk>


@pytest.mark.parametrize(("model_type", "bits"), CASES)
def test_greedy_decoding_is_varied(model_type: str, bits: int | None) -> None:
    # A random model, like a random Markov chain, sometimes falls into a one- or two-token
    # loop (about 2% of seed/prompt pairs); it must not do so for most prompts.
    model, _ = make_tiny_model(model_type, quantize_bits=bits)
    tokens = mx.array(PROMPTS, dtype=mx.int32)
    for _ in range(12):
        next_tokens = model(tokens)[:, -1].argmax(axis=-1)
        tokens = mx.concatenate([tokens, next_tokens[:, None]], axis=1)
    generated = np.array(tokens[:, len(PROMPTS[0]) :])
    assert (generated >= 4).all()  # never a special token, so never an early <eos>
    varied = [len(set(row.tolist())) >= 3 for row in generated]
    assert sum(varied) >= len(PROMPTS) - 1, generated


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_seed_determines_weights(model_type: str) -> None:
    a = _params(make_tiny_model(model_type, seed=0)[0])
    b = _params(make_tiny_model(model_type, seed=0)[0])
    c = _params(make_tiny_model(model_type, seed=1)[0])
    assert a.keys() == b.keys() == c.keys()
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not any(mx.array_equal(a[k], c[k]).item() for k in a)


def test_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="unknown model_type 'bert'") as info:
        tiny_config("bert")
    assert all(arch in str(info.value) for arch in ARCHITECTURES)
    with pytest.raises(ValueError, match="gpt_bigcode"):
        make_tiny_model("nope")


def test_tokenizer_words() -> None:
    words = tiny_tokenizer_words(VOCAB)
    assert len(words) == VOCAB - 4
    assert words[:3] == ["system", "user", "assistant"]
    assert words[10 - 4] == "w10" and words[-1] == f"w{VOCAB - 1}"
    with pytest.raises(ValueError):
        tiny_tokenizer_words(7)


def test_gemma3_text_has_sliding_and_global_layers() -> None:
    model, config = make_tiny_model("gemma3_text")
    assert config["sliding_window"] >= 512
    caches = model.make_cache()
    assert any(type(c) is KVCache for c in caches)
    rotating = [c for c in caches if isinstance(c, RotatingKVCache)]
    assert rotating and all(c.max_size >= 512 for c in rotating)
    assert "lm_head" not in model  # tied, as real Gemma 3 checkpoints load


def test_qwen3_moe_every_layer_sparse() -> None:
    model, config = make_tiny_model("qwen3_moe")
    assert config["num_experts"] == 4 and config["num_experts_per_tok"] == 2
    assert all(hasattr(layer.mlp, "switch_mlp") for layer in model.layers)


@pytest.mark.parametrize("group_size", [32, 64])
def test_benchmark_size_model(group_size: int) -> None:
    model, config = make_tiny_model(
        "llama", hidden_size=512, num_layers=6, quantize_bits=4, group_size=group_size
    )
    assert config["quantization"]["group_size"] == group_size
    assert len(model.layers) == 6
    logits = model(_batch())
    assert logits.shape == (2, 7, VOCAB)
    assert bool(mx.isfinite(logits).all())


def test_bfloat16_weights() -> None:
    model, _ = make_tiny_model("llama", dtype=mx.bfloat16)
    assert all(p.dtype == mx.bfloat16 for p in _params(model).values())
    assert bool(mx.isfinite(model(_batch()).astype(mx.float32)).all())
