"""KV-cached steered generation against a naive recompute-everything loop, and cache hygiene."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlux import (
    HookedModel,
    create_additive_hook,
    create_steering_hook,
    generate_from_cache,
    prefill_with_cache,
    stream_from_cache,
)
from mlux.generate import cache_length
from mlux.testing import make_tiny_model

PROMPT = [5, 9, 13, 7, 21, 4, 30, 11, 2, 17, 8]  # longer than the 4-token prefill chunk


def hooked_model(arch="llama", bits=None, **kw):
    return HookedModel(make_tiny_model(arch, quantize_bits=bits, **kw)[0], None)


def naive_greedy(hooked, prompt, hooks, n):
    """Recompute the whole sequence every step: no cache, so positions are trivially absolute."""
    seq = list(prompt)
    for _ in range(n):
        logits = hooked.run_with_hooks([seq], hooks)
        seq.append(int(mx.argmax(logits[0, -1]).item()))
    return seq[len(prompt):]


def direction(hooked, seed=0, scale=1.0):
    """A random direction as long as `scale` x the mean residual norm: a push that matters."""
    v = mx.random.normal((hooked.hidden_size,), key=mx.random.key(seed))
    _, acts = hooked.run_with_cache([PROMPT], ["residuals_1"])
    typical = mx.linalg.norm(acts["residuals_1"].astype(mx.float32), axis=-1).mean()
    return v / mx.linalg.norm(v) * typical * scale


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_cached_uniform_steering_equals_naive_loop(arch, bits):
    hooked = hooked_model(arch, bits)
    hooks = {"residuals_1": create_steering_hook(direction(hooked), 1.0)}
    cache, logits = prefill_with_cache(hooked, PROMPT, hooks=hooks, chunk_size=4)
    cached = generate_from_cache(hooked, cache, logits, max_tokens=8, hooks=hooks)
    assert cached == naive_greedy(hooked, PROMPT, hooks, 8)
    plain = generate_from_cache(hooked, *prefill_with_cache(hooked, PROMPT), max_tokens=8)
    assert cached != plain  # the steering did something


@pytest.mark.parametrize("bits", [None, 4])
def test_cached_position_specific_steering_equals_naive_loop(bits):
    hooked = hooked_model("llama", bits)
    d = direction(hooked, seed=1)
    # Deltas at prompt positions 2 and 9, and at generated positions 12 and 14.
    hook = create_additive_hook({2: d, 9: -d, 12: d * 2, 14: d})
    hooks = {"residuals_2": hook, "mlp_0": create_additive_hook(mx.stack([d * 0.5] * 13))}
    cache, logits = prefill_with_cache(hooked, PROMPT, hooks=hooks, chunk_size=4)
    cached = generate_from_cache(hooked, cache, logits, max_tokens=6, hooks=hooks)
    assert cached == naive_greedy(hooked, PROMPT, hooks, 6)


def test_generated_window_starts_at_the_last_prompt_token():
    """"generated" steers position n-1 (whose output is the first new token) and after, so the
    first token is steered while the prompt's first n-1 cached positions stay untouched."""
    hooked = hooked_model()
    n = len(PROMPT)
    d = direction(hooked)
    generated = {"residuals_1": create_steering_hook(d, 1.0, positions="generated",
                                                     prompt_length=n)}
    cache_s, steered_logits = prefill_with_cache(hooked, PROMPT, hooks=generated)
    cache, logits = prefill_with_cache(hooked, PROMPT)
    assert not mx.array_equal(steered_logits, logits).item()  # the first new token is steered
    for plain, steered_layer in zip(cache, cache_s, strict=True):  # prompt[:-1] unsteered
        assert mx.array_equal(plain.state[0][..., : n - 1, :],
                              steered_layer.state[0][..., : n - 1, :]).item()
    steered = generate_from_cache(hooked, cache_s, steered_logits, max_tokens=6,
                                  hooks=generated)
    assert steered == naive_greedy(hooked, PROMPT, generated, 6)
    # "prompt" and "generated" partition "all": both together equal "all".
    parts = [("residuals_1", create_steering_hook(d, 1.0, positions=w, prompt_length=n))
             for w in ("prompt", "generated")]
    everywhere = {"residuals_1": create_steering_hook(d, 1.0)}
    assert mx.allclose(prefill_with_cache(hooked, PROMPT, hooks=parts)[1],
                       prefill_with_cache(hooked, PROMPT, hooks=everywhere)[1]).item()
    assert naive_greedy(hooked, PROMPT, parts, 6) == naive_greedy(hooked, PROMPT, everywhere, 6)


@pytest.mark.parametrize("bits", [None, 4])
def test_zero_vector_is_bit_identical_to_no_steering(bits):
    hooked = hooked_model("qwen3", bits)
    zero = {"residuals_1": create_steering_hook(mx.zeros((hooked.hidden_size,)), 5.0)}
    cache, logits = prefill_with_cache(hooked, PROMPT)
    cache_z, logits_z = prefill_with_cache(hooked, PROMPT, hooks=zero)
    assert mx.array_equal(logits, logits_z).item()
    base = generate_from_cache(hooked, cache, logits, max_tokens=10)
    assert generate_from_cache(hooked, cache_z, logits_z, max_tokens=10, hooks=zero) == base


def test_one_prefill_serves_many_continuations():
    hooked = hooked_model()
    cache, logits = prefill_with_cache(hooked, PROMPT)
    n = len(PROMPT)
    keys_before = cache[0].state[0][..., :n, :]
    first = generate_from_cache(hooked, cache, logits, max_tokens=7)
    assert cache_length(cache) == len(PROMPT)
    steer = {"residuals_2": create_steering_hook(direction(hooked), 1.0)}
    generate_from_cache(hooked, cache, logits, max_tokens=7, hooks=steer)
    assert generate_from_cache(hooked, cache, logits, max_tokens=7) == first
    assert mx.array_equal(cache[0].state[0][..., :n, :], keys_before).item()
    sampled = [generate_from_cache(hooked, cache, logits, max_tokens=7, temperature=1.0,
                                   seed=4) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_rotating_cache_is_restored_after_it_wraps():
    hooked = hooked_model("gemma3_text", sliding_window=8)
    cache, logits = prefill_with_cache(hooked, PROMPT[:6])
    first = generate_from_cache(hooked, cache, logits, max_tokens=12)
    assert generate_from_cache(hooked, cache, logits, max_tokens=12) == first


def test_stream_closed_early_restores_cache_and_hooks():
    hooked = hooked_model()
    cache, logits = prefill_with_cache(hooked, PROMPT)
    hooks = {"residuals_1": create_steering_hook(direction(hooked), 1.0)}
    stream = stream_from_cache(hooked, cache, logits, max_tokens=20, hooks=hooks)
    next(stream), next(stream)
    assert hooked.active_hooks() == {}  # hooks live only inside each forward pass
    stream.close()
    assert hooked.active_hooks() == {}
    assert cache_length(cache) == len(PROMPT)


def test_stops_at_eos():
    hooked = hooked_model()
    cache, logits = prefill_with_cache(hooked, PROMPT)
    tokens = generate_from_cache(hooked, cache, logits, max_tokens=8)
    stop_at = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])

    class Tok:
        eos_token_ids = {tokens[stop_at]}

    hooked.tokenizer = Tok()
    assert generate_from_cache(hooked, cache, logits, max_tokens=8) == tokens[:stop_at]


def test_float16_model_stays_float16():
    model, _ = make_tiny_model("llama")
    model.set_dtype(mx.float16)
    hooked = HookedModel(model, None)
    vec = direction(hooked).astype(mx.float32)
    logits, acts = hooked.run_with_cache(
        [PROMPT], ["residuals_1", "residuals_2"],
        hooks={"residuals_1": create_steering_hook(vec, 2.0)})
    assert acts["residuals_1"].dtype == mx.float16 and acts["residuals_2"].dtype == mx.float16
    assert logits.dtype == mx.float16


def test_bad_generation_arguments():
    hooked = hooked_model()
    cache, logits = prefill_with_cache(hooked, PROMPT)
    with pytest.raises(ValueError, match="max_tokens"):
        generate_from_cache(hooked, cache, logits, max_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        generate_from_cache(hooked, cache, logits, max_tokens=2, temperature=-1.0, seed=1)
    with pytest.raises(ValueError, match="one prompt"):
        prefill_with_cache(hooked, [[1, 2], [3, 4]])
