"""One source of positions for every hook (issue 28): whatever cache a block holds (KV,
state-space, conv + KV `CacheList`, KV shared with an earlier layer, none), its hooks see the
position mlux's decoder, prefill, capture and run_with_cache declare (`TokenClock`)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlux import HookedModel, prefill_with_cache, stream_from_cache
from mlux.steering import create_additive_hook, create_steering_hook
from mlux.testing import tiny_model

# pure SSM, conv/SSM + KV in one CacheList, KV-shared layers, a block without attention,
# recurrent (rwkv), and a plain KV model as the control
ARCHS = ["mamba2", "falcon_h1", "gemma4_text", "nemotron-nas", "rwkv7", "llama"]
PROMPT = [5, 9, 13, 7, 21, 4, 30, 11]


@pytest.fixture(scope="module", params=ARCHS)
def hooked(request):
    return HookedModel(tiny_model(request.param)[0], None)


def test_every_layer_sees_the_same_position_while_decoding(hooked):
    seen: dict[int, list[tuple[int, int]]] = {}

    def record(x, ctx):
        seen.setdefault(ctx.layer, []).append((ctx.offset, ctx.length))

    hooks = [(f"residuals_{i}", record) for i in range(hooked.num_layers)]
    cache, logits = prefill_with_cache(hooked, PROMPT, hooks=hooks, chunk_size=3)
    list(stream_from_cache(hooked, cache, logits, max_tokens=4, hooks=hooks))
    n = len(PROMPT)
    # chunks of 3 over prompt[:-1], then the last prompt token, then one token per step
    want = [(0, 3), (3, 3), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1)]
    assert all(v == want for v in seen.values()), seen
    assert len(seen) == hooked.num_layers and want[3][0] == n - 1


def test_run_with_cache_after_a_cached_prefix_sees_absolute_positions(hooked):
    """A window and a position-keyed additive hook on the suffix, run on the prefix's cache,
    give the activations the whole sequence gives in one uncached pass."""
    rng = mx.random.key(3)
    d, k = hooked.hidden_size, 5
    table = mx.random.normal((len(PROMPT), d), key=rng)
    mid = f"residuals_{hooked.num_layers // 2}"
    last = f"residuals_{hooked.num_layers - 1}"
    hooks = [(mid, create_steering_hook(table[0] * 3, 1.0, positions=(3, 7))),
             (mid, create_additive_hook(table))]
    _, whole = hooked.run_with_cache(mx.array([PROMPT]), [last], hooks=hooks)
    cache, _ = prefill_with_cache(hooked, PROMPT[:k], hooks=hooks)
    _, rest = hooked.run_with_cache(mx.array([PROMPT[k:]]), [last], hooks=hooks, cache=cache)
    assert mx.allclose(rest[last][0], whole[last][0, k:], rtol=1e-3, atol=1e-3).item()
    # the stream before the cut is the prefix's: the hooks' deltas at positions >= k differ
    # from those at 0..len-k, so reading offset 0 would not match
    assert not mx.allclose(table[k:], table[: len(PROMPT) - k], atol=1e-3).item()


def test_plain_mlx_lm_generation_inside_apply_keeps_windows_right(hooked):
    """No mlux forward declares a position in `mlx_lm`'s own `generate_step`: each block counts
    on its cache (state-space caches carry a count mlux keeps for them, KV-shared layers take
    the one read before them), so a windowed vector steers the positions it names."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from mlux import SteeringVector

    vec = SteeringVector({hooked.num_layers // 2: mx.random.normal((hooked.hidden_size,),
                                                                   key=mx.random.key(5))})
    window, steps = (3, 10), 4
    with vec.apply(hooked, 4.0, positions=window):
        plain = [(int(t), lp) for (t, lp), _ in zip(
            generate_step(mx.array(PROMPT), hooked.model, max_tokens=steps,
                          prefill_step_size=3), range(steps), strict=False)]
        seq = list(PROMPT)
        for token, logprobs in plain:  # the naive loop: the whole sequence on a fresh cache
            fresh = make_prompt_cache(hooked.model)  # (gemma4's shared layers need one)
            logits = hooked.forward(mx.array([seq]), cache=fresh)[0, -1]
            assert mx.allclose(logits - mx.logsumexp(logits), logprobs, atol=1e-3).item()
            seq.append(token)
    assert hooked.clock.offset is None


def test_a_plain_call_on_kv_caches_still_reads_the_cache():
    """Without a declared position (a plain mlx-lm call inside `hooked.hooks`), KV layers read
    their cache's offset; the clock is unset outside mlux's forwards."""
    from mlx_lm.models.cache import make_prompt_cache

    hooked = HookedModel(tiny_model("llama")[0], None)
    offsets = []
    cache = make_prompt_cache(hooked.model)
    with hooked.hooks({"residuals_0": lambda x, ctx: offsets.append(ctx.offset)}):
        hooked.model(mx.array([PROMPT[:4]]), cache=cache)
        hooked.model(mx.array([PROMPT[4:5]]), cache=cache)
    assert offsets == [0, 4] and hooked.clock.offset is None
