"""HookedModel: loading, the transparent wrapper, hook contexts, and clear errors."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from mlux import HookedModel, HookWrapper
from mlux.hooks import HookError
from mlux.testing import make_tiny_model, save_tiny_model

TOKENS = mx.array([[5, 9, 13, 7, 21]])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {bits: save_tiny_model(root / f"llama-{bits}", "llama", quantize_bits=bits)
            for bits in (None, 4)}


@pytest.mark.parametrize("bits", [None, 4])
def test_from_pretrained_and_plain_mlx_lm_generation(model_dirs, bits):
    model, tokenizer = mlx_lm.load(str(model_dirs[bits]))
    expected = mlx_lm.generate(model, tokenizer, "w15 w16 w17", max_tokens=10)
    hooked = HookedModel.from_pretrained(str(model_dirs[bits]))
    assert hooked.quantization == ({"bits": 4, "group_size": 32} if bits else None)
    text = mlx_lm.generate(hooked.model, hooked.tokenizer, "w15 w16 w17", max_tokens=10)
    streamed = "".join(r.text for r in mlx_lm.stream_generate(
        hooked.model, hooked.tokenizer, "w15 w16 w17", max_tokens=10))
    assert text == expected == streamed
    assert len(make_prompt_cache(hooked.model)) == hooked.num_layers


def test_wrapper_forwards_attributes_it_does_not_own():
    model, _ = make_tiny_model("llama")
    block = model.model.layers[0]
    block.custom_flag = "kept"
    hooked = HookedModel(model, None)
    wrapper = model.model.layers[0]
    assert isinstance(wrapper, HookWrapper) and wrapper.wrapped is block
    assert wrapper.use_sliding is block.use_sliding  # what llama's forward reads
    assert wrapper.custom_flag == "kept"
    assert wrapper.self_attn.n_heads == block.self_attn.wrapped.n_heads
    wrapper.new_attr = 3  # writes land on the wrapped module too
    assert block.new_attr == 3
    with pytest.raises(AttributeError):
        _ = wrapper.no_such_attribute
    assert "residuals_0" in repr(wrapper)
    assert hooked.hook_points[0] == "attention_0"


def test_weights_load_and_quantize_through_wrappers():
    model, _ = make_tiny_model("llama")
    hooked = HookedModel(model, None)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert all("wrapped" not in k and "_mlux" not in k for k in names)
    other, _ = make_tiny_model("llama", seed=1)
    model.load_weights(list(tree_flatten(other.parameters())))
    assert mx.array_equal(model(TOKENS), other(TOKENS)).item()
    nn.quantize(model, group_size=32, bits=4)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    ref = model(TOKENS)
    logits = hooked.run_with_hooks(TOKENS, {"residuals_1": lambda x, c: x + 1})
    assert not mx.array_equal(logits, ref).item()


def test_wrapping_twice_reuses_wrappers_and_unwrap_restores():
    model, _ = make_tiny_model("qwen2")
    ref = model(TOKENS)
    first = HookedModel(model, None)
    second = HookedModel(model, None)
    assert first.arch.blocks[0] is second.arch.blocks[0]
    assert not isinstance(second.arch.blocks[0].wrapped, HookWrapper)
    plain = second.unwrap()
    assert not any(isinstance(b, HookWrapper) for b in plain.model.layers)
    assert not isinstance(plain.model.layers[0].self_attn, HookWrapper)
    assert mx.array_equal(plain(TOKENS), ref).item()


def test_hook_context_offsets_under_the_cache():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    seen = []
    hook = {"residuals_0": lambda x, c: seen.append((c.offset, c.is_prefill, c.length)),
            "mlp_1": lambda x, c: seen.append((c.name, c.layer, c.offset))}
    cache = make_prompt_cache(hooked.model)
    with hooked.hooks(hook):
        hooked.model(TOKENS, cache=cache)
        hooked.model(mx.array([[3]]), cache=cache)
    assert seen == [(0, True, 5), ("mlp_1", 1, 0), (5, False, 1), ("mlp_1", 1, 5)]


def test_nested_hooks_apply_in_order_and_unwind():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    order = []
    with hooked.hooks({"residuals_1": lambda x, c: order.append("outer")}):
        with hooked.hooks([("residuals_1", lambda x, c: order.append("inner"))]):
            hooked.forward(TOKENS)
            assert hooked.active_hooks() == {"residuals_1": 2}
        assert hooked.active_hooks() == {"residuals_1": 1}
    assert hooked.active_hooks() == {}
    assert order == ["outer", "inner"]


def test_run_with_cache_returns_only_what_was_asked():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    logits, acts = hooked.run_with_cache(TOKENS, ["mlp_0", "residuals_-1"])
    assert list(acts) == ["mlp_0", "residuals_3"]
    assert acts["mlp_0"].shape == (1, 5, 64)
    assert logits.shape == (1, 5, 64)
    _, last = hooked.run_with_cache(TOKENS, "all", reduce=lambda x: x[:, -1])
    assert last["residuals_2"].shape == (1, 64)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("", "encodes to no tokens"),
        ([], "empty input"),
        ([[]], "empty token list"),
        ([1, "a"], "inputs must be"),
        (mx.array([[1.5, 2.0]]), "must be integer"),
        ([999], r"token ids must be in 0\.\.63"),
    ],
)
def test_bad_inputs(model_dirs, inputs, message):
    hooked = HookedModel.from_pretrained(str(model_dirs[None]))
    with pytest.raises(ValueError, match=message):
        hooked.run_with_cache(inputs)


def test_bad_hooks():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    with pytest.raises(ValueError, match="out of range.*0\\.\\.3"):
        hooked.run_with_hooks(TOKENS, {"residuals_4": lambda x, c: None})
    with pytest.raises(ValueError, match="unknown layer spec 'block_1'"):
        hooked.run_with_hooks(TOKENS, {"block_1": lambda x, c: None})
    with pytest.raises(ValueError, match="not callable"):
        hooked.run_with_hooks(TOKENS, {"mlp_1": 3})
    shape_msg = r"mlp_1 returned shape \(1, 5, 32\); expected \(1, 5, 64\)"
    with pytest.raises(HookError, match=shape_msg):
        hooked.run_with_hooks(TOKENS, {"mlp_1": lambda x, c: x[..., :32]})
    with pytest.raises(HookError, match="returned list"):
        hooked.run_with_hooks(TOKENS, {"mlp_1": lambda x, c: [1]})
    assert hooked.active_hooks() == {}


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        HookedModel.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="neither an existing model directory"):
        HookedModel.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="could not load model"):
        HookedModel.from_pretrained(str(tmp_path))


def test_unsupported_architecture_lists_what_was_tried():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="unsupported architecture.*Tried the paths model.layers"):
        HookedModel(NoBlocks(), None)
