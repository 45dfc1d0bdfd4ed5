"""The one decoder against independent references: a naive recompute-everything loop, mlx-lm's
own prefill, and each row decoded alone; on every architecture, fp32 and 4-bit."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

from mlux import (
    ContrastiveSteering,
    HookedModel,
    SteeringVector,
    create_steering_hook,
    generate_batch,
    generate_from_cache,
    prefill_with_cache,
    stream_from_cache,
)
from mlux.decode import Decoder
from mlux.generate import collect_rows, stream_rows
from mlux.steering import Steering
from mlux.testing import ARCHITECTURES, make_tiny_model

PROMPTS = [[5, 9, 13, 7, 21, 4], [8, 7, 21], [11, 12, 30, 6, 40, 41, 9, 22]]
WINDOWS = ["all", "prompt", "generated", 4, (2, 9)]


def hooked_model(arch: str = "llama", bits=None) -> HookedModel:
    return HookedModel(make_tiny_model(arch, quantize_bits=bits)[0], None)


def direction(hooked: HookedModel, seed: int = 0) -> mx.array:
    """A random direction as long as the typical residual at layer 1: a push that matters."""
    v = mx.random.normal((hooked.hidden_size,), key=mx.random.key(seed))
    acts = hooked.capture([PROMPTS[0]], ["residuals_1"])["residuals_1"]
    return v / mx.linalg.norm(v) * mx.linalg.norm(acts.astype(mx.float32), axis=-1).mean()


def naive(hooked: HookedModel, prompt: list[int], n: int, steer=None) -> list[int]:
    """Recompute the whole sequence every step: no cache, no decoder, positions trivially
    absolute. `steer` = (vector, alpha, window) at layer 1."""
    hooks = None
    if steer is not None:
        vec, alpha, window = steer
        hooks = {"residuals_1": create_steering_hook(vec, alpha, positions=window,
                                                     prompt_length=len(prompt))}
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(mx.argmax(hooked.run_with_hooks([seq], hooks)[0, -1]).item()))
    return seq[len(prompt):]


@pytest.mark.parametrize("bits", [None, 4], ids=["fp32", "4bit"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_entry_point_equals_each_row_alone(arch, bits):
    """generate_batch (padded or row-by-row fallback), stream_rows with a shared prefill,
    stream_from_cache and a decoder with rows joining late: every row equals the naive loop."""
    hooked = hooked_model(arch, bits)
    v = direction(hooked)
    cells = [(None, 0), ((v, 2.0, "all"), 1), ((v, -2.0, "generated"), 2)]
    expect = [naive(hooked, PROMPTS[p], 6, s) for s, p in cells]
    steering = [Steering({1: s[0]}, s[1], positions=s[2]) if s else None for s, _ in cells]
    assert generate_batch(hooked, [PROMPTS[p] for _, p in cells], max_tokens=6,
                          steering=steering) == expect
    assert expect[1] != naive(hooked, PROMPTS[1], 6)  # the steering did something

    shared = [Steering({1: v}, a, positions="generated") if a else None for a in (0, 2.0, -2.0)]
    rows = collect_rows(stream_rows(hooked, PROMPTS[2], shared, max_tokens=6), 3)
    assert rows == [naive(hooked, PROMPTS[2], 6, (v, a, "generated") if a else None)
                    for a in (0, 2.0, -2.0)]

    hook = {"residuals_1": create_steering_hook(v, 2.0)}
    cache, logits = prefill_with_cache(hooked, PROMPTS[1], hooks=hook)
    assert list(stream_from_cache(hooked, cache, logits, max_tokens=6, hooks=hook)) == expect[1]


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # padded batches, and the fallback
def test_rows_joining_and_leaving_mid_decode_change_no_other_row(arch):
    hooked = hooked_model(arch)
    v = direction(hooked, seed=2)
    alone = [naive(hooked, PROMPTS[0], 10), naive(hooked, PROMPTS[1], 10, (v, 2.0, "all")),
             naive(hooked, PROMPTS[2], 10)]
    out: dict[int, list[int]] = {}
    with Decoder(hooked) as decoder:
        (a,) = decoder.insert([PROMPTS[0]], max_tokens=10)
        for _ in range(3):
            for e in decoder.next():
                out.setdefault(e.uid, []).append(e.token)
        b, c = decoder.insert([PROMPTS[1], PROMPTS[2]], max_tokens=10,
                              steering=[Steering({1: v}, 2.0), None])
        for step in range(4):
            if step == 2:
                decoder.remove([c])  # its client left
            for e in decoder.next():
                out.setdefault(e.uid, []).append(e.token)
        while len(decoder):
            for e in decoder.next():
                out.setdefault(e.uid, []).append(e.token)
    assert out[a] == alone[0] and out[b] == alone[1]
    assert out[c] == alone[2][:2]


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("bits", [None, 4], ids=["fp32", "4bit"])
def test_cached_decoding_with_each_window_equals_naive_recompute(window, bits):
    hooked = hooked_model("qwen3", bits)
    v = direction(hooked, seed=3)
    out = generate_batch(hooked, [PROMPTS[0], PROMPTS[2]], max_tokens=7,
                         steering=[Steering({1: v}, 2.0, positions=window)] * 2)
    assert out == [naive(hooked, p, 7, (v, 2.0, window)) for p in (PROMPTS[0], PROMPTS[2])]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_bigcode"])
def test_prefill_logits_equal_mlx_lm_and_the_unhooked_model(arch):
    model, _ = make_tiny_model(arch)
    tokens = mx.array(PROMPTS[2])
    full = model(tokens[None])[0, -1]  # the unwrapped model, one plain forward
    _, mlx_lm_logprobs = next(generate_step(tokens, model, max_tokens=1))
    hooked = HookedModel(model, None)
    _, logits = prefill_with_cache(hooked, PROMPTS[2], chunk_size=3)
    assert mx.allclose(logits, full, atol=1e-4, rtol=1e-4).item()
    _, logits = prefill_with_cache(hooked, PROMPTS[2])
    # mlx-lm prefills prompt[:-1] and then runs the last token: the same computation, exactly.
    assert mx.array_equal(logits - mx.logsumexp(logits), mlx_lm_logprobs).item()


def test_first_generated_token_is_steered_on_the_builtin_model():
    from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS

    hooked = HookedModel.from_pretrained("mlux-toy")
    for positions in ("all", "generated"):
        steer = ContrastiveSteering(hooked, *CONTRAST_PROMPTS["sentiment"], layer=2,
                                    positions=positions)
        first = [steer.generate(TEST_PROMPTS[1], alpha=a, max_tokens=1) for a in (-8, 0, 8)]
        assert first[0] != first[1] and first[2] != first[1], (positions, first)
    assert ContrastiveSteering.__init__.__kwdefaults__["positions"] == "all"


def test_rows_stop_on_their_own_ids_and_limits():
    hooked = hooked_model()
    base = naive(hooked, PROMPTS[0], 8)
    stop_at = next(i for i in range(1, 8) if base[i] not in base[:i])
    with Decoder(hooked) as decoder:
        a, b, c = decoder.insert([PROMPTS[0]] * 3, max_tokens=[8, stop_at, 0],
                                 stop=[base[stop_at]])
        events = [e for step in decoder.stream() for e in step]
    finish = {e.uid: e.finish for e in events if e.finish}
    assert finish == {a: "stop", b: "length", c: "length"}
    assert [e.token for e in events if e.uid == a and e.token is not None] == base[:stop_at]
    assert [e.token for e in events if e.uid == b] == base[:stop_at]


def test_lent_cache_is_handed_back_and_no_hook_outlives_a_step():
    hooked = hooked_model()
    hook = {"residuals_1": create_steering_hook(direction(hooked), 1.5)}
    cache, logits = prefill_with_cache(hooked, PROMPTS[0])
    first = generate_from_cache(hooked, cache, logits, max_tokens=5, hooks=hook)
    stream = stream_from_cache(hooked, cache, logits, max_tokens=5, hooks=hook)
    next(stream)
    assert hooked.active_hooks() == {}
    stream.close()
    assert cache[0].offset == len(PROMPTS[0])
    assert generate_from_cache(hooked, cache, logits, max_tokens=5, hooks=hook) == first


def test_steering_vector_is_the_one_vector_type():
    hooked = hooked_model()
    v = direction(hooked, seed=4)
    vec = SteeringVector({1: v, 2: -v})
    assert dict(vec).keys() == {1, 2} and vec[1] is vec.directions[1] and len(vec) == 2
    one = SteeringVector({1: v})
    ref = naive(hooked, PROMPTS[0], 5, (v, 2.0, "all"))
    hooks = {"residuals_1": create_steering_hook(one, 2.0)}
    cache, logits = prefill_with_cache(hooked, PROMPTS[0], hooks=hooks)
    assert generate_from_cache(hooked, cache, logits, max_tokens=5, hooks=hooks) == ref
    with pytest.raises(ValueError, match=r"has layers \[1, 2\]"):
        create_steering_hook(vec, 1.0)
    for window in ("all", "generated"):
        with one.apply(hooked, 2.0, positions=window):
            out = generate_batch(hooked, [PROMPTS[0]], max_tokens=5)[0]
        assert out == naive(hooked, PROMPTS[0], 5, (v, 2.0, window))
        assert hooked.active_hooks() == {} and hooked.ambient_steering == []
    with pytest.raises(ValueError, match="hidden size"):
        with SteeringVector({1: mx.ones((5,))}).apply(hooked, 1.0):
            pass
