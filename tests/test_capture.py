"""`HookedModel.capture`: the activations `run_with_cache` gives, bit for bit, from a pass that
stops at the deepest hook point asked for and never runs the final norm or the LM head."""

from __future__ import annotations

import functools
from collections import Counter

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlux import HookedModel, create_steering_hook
from mlux.testing import ARCHITECTURES, make_tiny_model

SINGLE = [[5, 9, 13, 7, 21, 4, 30]]
PADDED = [[5, 9, 13], [7, 21, 4, 30, 11, 2], [8, 8]]  # left-padded, masked (or row by row)
SHALLOW = ["attention_1", "residuals_0", "mlp_1"]  # stops inside block 1
DEEP = ["residuals_1", "mlp_0", "attention_2", "residuals_-1"]  # the last block's output
ARCH_BITS = [(a, b) for a in ARCHITECTURES for b in (None, 4)]


def _id(p: tuple[str, int | None]) -> str:
    return f"{p[0]}-{'4bit' if p[1] else 'fp32'}"


@functools.cache
def hooked_model(arch: str, bits: int | None) -> HookedModel:
    """One wrapped tiny model per architecture and precision, shared: every test leaves it clean
    (which is itself checked)."""
    return HookedModel(make_tiny_model(arch, quantize_bits=bits)[0], None)


def fresh(arch: str, bits: int | None) -> HookedModel:
    return HookedModel(make_tiny_model(arch, quantize_bits=bits)[0], None)


def steer(hooked: HookedModel) -> dict:
    vector = mx.random.normal((hooked.hidden_size,), key=mx.random.key(1))
    return {"residuals_0": create_steering_hook(vector, 2.0)}


def last_token(x: mx.array) -> mx.array:
    return x[:, -1]


def assert_same(got: dict[str, mx.array], ref: dict[str, mx.array]) -> None:
    assert list(got) == list(ref)
    for name, x in ref.items():
        assert got[name].shape == x.shape and got[name].dtype == x.dtype, name
        assert mx.array_equal(got[name], x).item(), name


@pytest.mark.parametrize("arch_bits", ARCH_BITS, ids=_id)
def test_capture_equals_run_with_cache_bit_for_bit(arch_bits):
    hooked = hooked_model(*arch_bits)
    hooks = steer(hooked)
    for names in (SHALLOW, DEEP):
        for inputs in (SINGLE, PADDED):
            for with_hooks in (False, True):
                for reduce in (None, last_token):
                    kw = {"hooks": hooks if with_hooks else None, "reduce": reduce}
                    _, ref = hooked.run_with_cache(inputs, names, **kw)
                    got = hooked.capture(inputs, names, **kw)
                    assert_same(got, ref)
                    assert hooked.active_hooks() == {}
    # names=None: every residual, as run_with_cache's default
    assert_same(hooked.capture(PADDED), hooked.run_with_cache(PADDED)[1])


@pytest.mark.parametrize("arch_bits", ARCH_BITS, ids=_id)
def test_hooks_after_the_deepest_point_never_run(arch_bits):
    hooked = hooked_model(*arch_bits)
    calls: Counter = Counter()

    def counter(x, ctx):
        calls[ctx.name] += 1

    later = ["mlp_1", "residuals_1", "attention_2", "residuals_-1", "mlp_-1"]
    earlier = ["residuals_0", "attention_1"]
    for inputs in (SINGLE, PADDED):
        calls.clear()
        # passed to capture, and installed around it: neither runs past attention_1
        with hooked.hooks({n: counter for n in earlier[:1] + later[:2]}):
            hooked.capture(inputs, ["attention_1"],
                           hooks={n: counter for n in earlier[1:] + later[2:]})
        groups = len(hooked.split_batch(hooked.tokenize(inputs)))
        assert {n: calls[n] for n in earlier} == dict.fromkeys(earlier, groups)
        assert {n: calls[n] for n in later} == dict.fromkeys(later, 0)
    assert hooked.active_hooks() == {}


def _count_lm_head(hooked: HookedModel) -> Counter:
    """Count calls of the LM head: the `lm_head` module, or the tied embedding's `as_linear`."""
    calls: Counter = Counter()
    top = hooked.model
    if "lm_head" in top:
        head = top.lm_head

        class Counting(nn.Module):
            def __call__(self, x):
                calls["head"] += 1
                return head(x)

        top.lm_head = Counting()
    else:
        embed = next(m for _, m in top.named_modules()  # not gpt2's position embedding
                     if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))
                     and m.weight.shape[0] == hooked.vocab_size)
        as_linear = embed.as_linear

        def counting(x):
            calls["head"] += 1
            return as_linear(x)

        embed.as_linear = counting
    return calls


@pytest.mark.parametrize("arch_bits", ARCH_BITS, ids=_id)
def test_capture_never_runs_the_lm_head(arch_bits):
    hooked = fresh(*arch_bits)
    groups = len(hooked.split_batch(hooked.tokenize(PADDED)))  # probes padded batches first
    head = _count_lm_head(hooked)
    last: Counter = Counter()
    with hooked.hooks({"residuals_-1": lambda x, ctx: last.update([ctx.name])}):
        hooked.run_with_cache(PADDED, ["residuals_0"])
        assert head["head"] == groups and sum(last.values()) == groups  # the counters count
        head.clear()
        last.clear()
        hooked.capture(PADDED, ["residuals_0"])
        assert sum(last.values()) == 0  # the last block never ran
        hooked.capture(PADDED, ["residuals_-1", "mlp_0"])
        hooked.capture(SINGLE, "all")
        assert head["head"] == 0  # not even when the last block's output is asked for


@pytest.mark.parametrize("arch_bits", [("llama", None), ("llama", 4), ("gemma2", None),
                                       ("gpt_bigcode", 4), ("cohere", None)], ids=_id)
def test_an_exception_inside_capture_leaves_the_model_clean(arch_bits):
    hooked = fresh(*arch_bits)
    _, clean = fresh(*arch_bits).run_with_cache(PADDED, DEEP)

    def boom(x, ctx):
        raise RuntimeError("boom")

    def bad_reduce(x):
        raise RuntimeError("boom in reduce")

    outer: Counter = Counter()
    with hooked.hooks({"mlp_0": lambda x, ctx: outer.update([ctx.name])}):
        with pytest.raises(RuntimeError, match="boom"):
            hooked.capture(PADDED, DEEP, hooks={"residuals_1": boom, "attention_0": boom})
        with pytest.raises(RuntimeError, match="boom in reduce"):
            hooked.capture(PADDED, DEEP, reduce=bad_reduce)
        assert hooked.active_hooks() == {"mlp_0": 1}  # the caller's hook stays, capture's left
    assert hooked.active_hooks() == {}
    _, after = hooked.run_with_cache(PADDED, DEEP)
    assert_same(after, clean)
    assert_same(hooked.capture(PADDED, DEEP), clean)


def test_bad_names_raise_value_error_naming_the_spec():
    hooked = hooked_model("llama", None)
    for spec in ("residuals_99", "bogus_1", "mlp_-9", "attention_x"):
        with pytest.raises(ValueError, match=spec):
            hooked.capture(SINGLE, [spec])
        with pytest.raises(ValueError, match=spec):
            hooked.capture(SINGLE, ["residuals_0"], hooks={spec: lambda x, ctx: None})
    assert hooked.active_hooks() == {}
