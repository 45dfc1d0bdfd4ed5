"""Batched, per-row steered generation against each row generated alone."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlux import (
    ContrastiveSteering,
    HookedModel,
    generate_from_cache,
    prefill_with_cache,
    steering_hooks,
)
from mlux.generate import generate_batch
from mlux.steering import Steering, row_steering_hooks
from mlux.testing import make_tiny_model, save_tiny_model

PROMPTS = [[5, 9, 13, 7], [8, 7, 21], [5, 9, 13, 7, 21, 4, 30, 6, 40], [11, 12],
           [33, 34, 35, 36, 37], [9], [14, 15, 16], [50, 51, 52, 53]]
ALPHAS = [0.0, 1.5, -1.5, 3.0]
LAYERS = [1, 2]


def solo(hooked, prompt, layer, alpha, v, **kw):
    hooks = steering_hooks({layer: v}, alpha) if alpha else None
    cache, logits = prefill_with_cache(hooked, prompt, hooks=hooks)
    return generate_from_cache(hooked, cache, logits, hooks=hooks, **kw)


@pytest.mark.parametrize("bits", [None, 4], ids=["fp32", "4bit"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2", "cohere"])
def test_rows_equal_solo_generation(arch, bits):
    hooked = HookedModel(make_tiny_model(arch, quantize_bits=bits)[0], None)
    v = mx.random.normal((hooked.hidden_size,), key=mx.random.key(3)) * 2
    cells = [(a, lyr) for lyr in LAYERS for a in ALPHAS]  # 8 rows: 4 alphas x 2 layers
    steering = [Steering({lyr: v}, a, positions="all") if a else None for a, lyr in cells]
    out = generate_batch(hooked, PROMPTS, max_tokens=10, steering=steering)
    # 4-bit: quantized matmuls are deterministic per row, so the tolerance is exact equality too.
    for i, ((alpha, layer), prompt) in enumerate(zip(cells, PROMPTS, strict=True)):
        assert out[i] == solo(hooked, prompt, layer, alpha, v, max_tokens=10), f"row {i}"
    assert len({tuple(r) for r in out}) > 4  # the rows really differ


def test_padding_rows_change_nothing():
    hooked = HookedModel(make_tiny_model("qwen2")[0], None)
    alone = generate_batch(hooked, [PROMPTS[2]], max_tokens=12)[0]
    with_others = generate_batch(hooked, [PROMPTS[5], PROMPTS[2], PROMPTS[3]], max_tokens=12)
    assert with_others[1] == alone


def test_per_row_layer_choice_leaves_other_layers_alone():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    v = mx.ones((hooked.hidden_size,))
    batch = [PROMPTS[0], PROMPTS[1]]
    lengths = [len(p) for p in batch]
    hooks = row_steering_hooks(hooked, [Steering({1: v}, 2.0), Steering({2: v}, 2.0)], lengths)
    _, clean = hooked.run_with_cache(batch, ["residuals_1", "residuals_2"])
    _, steered = hooked.run_with_cache(batch, ["residuals_1", "residuals_2"], hooks=hooks)
    assert not mx.array_equal(steered["residuals_1"][0], clean["residuals_1"][0]).item()
    assert mx.array_equal(steered["residuals_1"][1], clean["residuals_1"][1]).item()
    assert not mx.array_equal(steered["residuals_2"][1], clean["residuals_2"][1]).item()


def test_per_row_positions_generated():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    v = mx.random.normal((hooked.hidden_size,), key=mx.random.key(5)) * 2
    steering = [Steering({1: v}, 2.0, positions="generated"), None]
    out = generate_batch(hooked, [PROMPTS[2], PROMPTS[3]], max_tokens=8, steering=steering)
    n = len(PROMPTS[2])
    hook = steering_hooks({1: v}, 2.0, positions="generated", prompt_length=n)
    cache, logits = prefill_with_cache(hooked, PROMPTS[2])
    assert out[0] == generate_from_cache(hooked, cache, logits, max_tokens=8, hooks=hook)
    assert out[1] == solo(hooked, PROMPTS[3], 1, 0.0, v, max_tokens=8)


def test_sampled_rows_follow_their_seeds():
    hooked = HookedModel(make_tiny_model("llama")[0], None)
    out = generate_batch(hooked, PROMPTS[:3], max_tokens=8, temperature=1.0, seed=[7, 8, 9])
    for prompt, seed, row in zip(PROMPTS[:3], [7, 8, 9], out, strict=True):
        cache, logits = prefill_with_cache(hooked, prompt)
        assert row == generate_from_cache(hooked, cache, logits, max_tokens=8,
                                          temperature=1.0, seed=seed)


def test_compare_batch_equals_sequential_generate(tmp_path):
    hooked = HookedModel.from_pretrained(str(save_tiny_model(tmp_path / "m", "llama")))
    pos, neg = ["w15 w16 w17", "w8 w9"], ["w30 w31", "w32 w33 w34"]
    for positions in ("generated", "all"):
        steer = ContrastiveSteering(hooked, pos, neg, [1, 2], positions=positions)
        both = steer.compare("w15 w16", alphas=[-3.0, 0.0, 3.0], max_tokens=8, temperature=1.0,
                             seed=11)
        for alpha, text in both.items():
            # Independent reference: this alpha alone through prefill + generate_from_cache.
            tokens = hooked.tokenize("w15 w16").tokens[0].tolist()
            hooks = steer.hooks(alpha, prompt_length=len(tokens)) if alpha else None
            cache, logits = prefill_with_cache(hooked, tokens, hooks=hooks)
            ids = generate_from_cache(hooked, cache, logits, max_tokens=8, hooks=hooks,
                                      temperature=1.0, seed=11)
            assert text == hooked.tokenizer.decode(ids)


def test_batch_errors():
    llama = HookedModel(make_tiny_model("llama")[0], None)
    with pytest.raises(ValueError, match="steering has 1 rows for 2 prompts"):
        generate_batch(llama, [[1, 2], [3]], max_tokens=2, steering=[None])
    with pytest.raises(ValueError, match="hidden size is 64"):
        generate_batch(llama, [[1, 2]], max_tokens=2,
                       steering=[Steering({1: mx.ones((5,))}, 1.0)])
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        generate_batch(llama, [], max_tokens=2)


def test_per_row_alpha_and_vector_forms_of_create_steering_hook():
    from mlux import create_steering_hook

    hooked = HookedModel(make_tiny_model("llama")[0], None)
    v = mx.random.normal((hooked.hidden_size,), key=mx.random.key(9)) * 2
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    alphas = [0.0, 1.5, -1.5]
    per_alpha = {"residuals_1": create_steering_hook(v, mx.array(alphas))}
    per_vector = {"residuals_1": create_steering_hook(mx.stack([v * a for a in alphas]), 1.0)}
    by_alpha = generate_batch(hooked, prompts, max_tokens=8, hooks=per_alpha)
    assert generate_batch(hooked, prompts, max_tokens=8, hooks=per_vector) == by_alpha
    for prompt, alpha, row in zip(prompts, alphas, by_alpha, strict=True):
        assert row == solo(hooked, prompt, 1, alpha, v, max_tokens=8)
