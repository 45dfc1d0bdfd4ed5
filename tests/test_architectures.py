"""Hook points on every supported architecture, fp32 and 4-bit, against independent references."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import ADDITIVE, fresh_model
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models.base import create_causal_mask

from mlux import HookedModel, HookWrapper

TOKENS = mx.array([[5, 9, 13, 7, 21, 4, 30]])


def test_wrapping_keeps_parameter_names_and_logits(arch_bits, reference):
    model = fresh_model(*arch_bits)
    before = [(k, v.shape, v.dtype) for k, v in tree_flatten(model.parameters())]
    hooked = HookedModel(model, None)
    after = [(k, v.shape, v.dtype) for k, v in tree_flatten(model.parameters())]
    assert before == after
    assert all(isinstance(b, HookWrapper) for b in hooked.arch.blocks)
    ref_logits, _ = reference
    assert mx.array_equal(model(TOKENS), ref_logits).item()


def test_noop_hook_on_every_point_is_bit_identical(arch_bits, reference):
    hooked = HookedModel(fresh_model(*arch_bits), None)
    assert len(hooked.hook_points) == 3 * hooked.num_layers
    seen = set()

    def noop(x, ctx):
        seen.add(ctx.name)
        return x

    logits = hooked.run_with_hooks(TOKENS, {n: noop for n in hooked.hook_points})
    assert seen == set(hooked.hook_points)  # every point fired
    assert mx.array_equal(logits, reference[0]).item()


def test_residuals_equal_a_hand_written_block_loop(arch_bits):
    model = fresh_model(*arch_bits)
    hooked = HookedModel(model, None)
    blocks = [b.wrapped for b in hooked.arch.blocks]
    first = {}
    original = blocks[0].__call__

    class Recorder:  # independent of mlux: records block 0's input (the embeddings)
        def __call__(self, x, *args, **kwargs):
            first["x"] = x
            return original(x, *args, **kwargs)

        def __getattr__(self, key):
            return getattr(blocks[0], key)

    hooked.arch.blocks[0] = Recorder()
    try:
        model(TOKENS)
    finally:
        hooked.arch.blocks[0] = hooked._points["residuals_0"]
    _, acts = hooked.run_with_cache(TOKENS)
    h = first["x"]
    mask = create_causal_mask(h.shape[1])
    for i, block in enumerate(blocks):
        h = block(h, mask, cache=None)
        assert mx.allclose(h, acts[f"residuals_{i}"], atol=1e-5).item(), f"layer {i}"


def test_attention_plus_mlp_add_up_to_the_residual(arch_bits):
    if arch_bits[0] not in ADDITIVE:
        pytest.skip("block normalises its branch outputs (post-norm / sandwich)")
    hooked = HookedModel(fresh_model(*arch_bits), None)
    _, acts = hooked.run_with_cache(TOKENS, ["all", "attention_all", "mlp_all"])
    prev = None
    for i in range(1, hooked.num_layers):
        prev = acts[f"residuals_{i - 1}"]
        total = prev + acts[f"attention_{i}"] + acts[f"mlp_{i}"]
        assert mx.allclose(total, acts[f"residuals_{i}"], atol=1e-4).item(), f"layer {i}"


def test_hooks_removed_after_exception(arch_bits, reference):
    hooked = HookedModel(fresh_model(*arch_bits), None)

    def boom(x, ctx):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with hooked.hooks({"residuals_1": boom, "mlp_0": lambda x, c: x * 2}):
            hooked.forward(TOKENS)
    assert hooked.active_hooks() == {}
    assert mx.array_equal(hooked.forward(TOKENS), reference[0]).item()


def test_batched_equals_unbatched(arch_bits):
    hooked = HookedModel(fresh_model(*arch_bits), None)
    rows = [[5, 9, 13], [7, 21, 4, 30, 11, 2], [8, 8]]
    logits, acts = hooked.run_with_cache(rows, ["residuals_1", "mlp_-1"])
    width = logits.shape[1]
    def close(x, ref):  # BLAS blocking differs with batch shape: compare relative to scale
        return mx.abs(x - ref).max().item() <= 2e-5 * max(1.0, mx.abs(ref).max().item())

    for i, row in enumerate(rows):
        lg, a = hooked.run_with_cache([row], ["residuals_1", "mlp_-1"])
        pad = width - len(row)
        assert close(logits[i, pad:], lg[0])
        for name in a:
            assert close(acts[name][i, pad:], a[name][0])


def test_hook_changes_later_layers_only(arch_bits, reference):
    hooked = HookedModel(fresh_model(*arch_bits), None)
    _, clean = hooked.run_with_cache(TOKENS)
    target = hooked.num_layers - 2
    hook = {f"residuals_{target}": lambda x, ctx: x + 1.0}
    logits, steered = hooked.run_with_cache(TOKENS, hooks=hook)
    assert not mx.array_equal(logits, reference[0]).item()
    for j in range(target):
        assert mx.array_equal(steered[f"residuals_{j}"], clean[f"residuals_{j}"]).item()
    assert not mx.array_equal(steered[f"residuals_{target}"], clean[f"residuals_{target}"]).item()


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_sub_hooks_change_logits(arch_bits, reference, kind):
    hooked = HookedModel(fresh_model(*arch_bits), None)
    logits = hooked.run_with_hooks(TOKENS, {f"{kind}_0": lambda x, c: x * 0.0 + 0.5})
    assert not mx.array_equal(logits, reference[0]).item()


def test_plain_mlx_lm_generation_unchanged(arch_bits):
    prompt = mx.array([5, 9, 13, 7])

    def tokens(model):
        return [t for t, _ in generate_step(prompt, model, max_tokens=8)]

    model = fresh_model(*arch_bits)
    expected = tokens(model)
    HookedModel(model, None)
    assert tokens(model) == expected
