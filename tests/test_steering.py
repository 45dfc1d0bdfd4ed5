"""Extraction against hand computations, PCA on a planted direction, ablation, and errors."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlux import (
    ContrastiveSteering,
    HookedModel,
    SteeringVector,
    compute_steering_vector,
    create_steering_hook,
    extract_steering_vectors,
    generate_from_cache,
    prefill_with_cache,
    steering_hooks,
)
from mlux.extract import _pca_direction
from mlux.steering import create_ablation_hook
from mlux.testing import save_tiny_model

POS = ["w15 w16 w17", "w8 w9", "w10 w11 w12 w13", "w25 w9 w20"]
NEG = ["w30 w31", "w32 w33 w34", "w35", "w36 w37 w38 w39 w40"]


@pytest.fixture(scope="module", params=[None, 4], ids=["fp32", "4bit"])
def hooked(request, tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama",
                           quantize_bits=request.param)
    return HookedModel.from_pretrained(str(path))


def last_residual(hooked, prompt, layer):
    _, acts = hooked.run_with_cache(prompt, [f"residuals_{layer}"])
    return acts[f"residuals_{layer}"][0, -1].astype(mx.float32)


def test_mean_diff_equals_hand_computation_one_prompt_at_a_time(hooked):
    vec = compute_steering_vector(hooked, POS, NEG, 2)
    pos = mx.stack([last_residual(hooked, p, 2) for p in POS]).mean(0)
    neg = mx.stack([last_residual(hooked, p, 2) for p in NEG]).mean(0)
    assert vec.dtype == mx.float32 and vec.shape == (hooked.hidden_size,)
    assert mx.allclose(vec, pos - neg, atol=1e-4).item()


def test_all_layers_from_one_batched_pass_match_single_layer_extraction(hooked):
    calls = []  # block 0 runs once per forward pass

    with hooked.hooks({"residuals_0": lambda x, ctx: calls.append(x.shape)}):
        vecs = extract_steering_vectors(hooked, POS, NEG, "all", batch_size=8)
    assert len(calls) == 1 and calls[0][0] == 8  # 8 prompts, one batch, every layer
    for layer in range(hooked.num_layers):
        single = compute_steering_vector(hooked, POS, NEG, layer, batch_size=1)
        # Batched vs one row: BLAS blocks differ with the batch shape, so scale-relative.
        assert mx.allclose(vecs[layer], single, rtol=1e-4, atol=1e-3).item()


def test_pca_recovers_a_planted_direction():
    key = mx.random.key(7)
    k1, k2, k3, k4 = mx.random.split(key, 4)
    planted = mx.random.normal((64,), key=k1)
    planted = planted / mx.linalg.norm(planted)
    base = mx.random.normal((24, 64), key=k2) * 3
    strength = 2 + mx.random.uniform(shape=(24, 1), key=k3) * 3
    neg = base
    pos = base + strength * planted + mx.random.normal((24, 64), key=k4) * 0.1
    vec = _pca_direction(pos, neg)
    cos = (vec @ planted) / mx.linalg.norm(vec)
    assert cos.item() > 0.99  # and its sign makes positives project higher
    flipped = _pca_direction(neg, pos)
    assert ((flipped @ planted) / mx.linalg.norm(flipped)).item() < -0.99


def test_pca_through_the_model_is_signed_towards_positives(hooked):
    vecs = extract_steering_vectors(hooked, POS, NEG, [1, 2], method="pca")
    for layer, vec in vecs.items():
        pos = mx.stack([last_residual(hooked, p, layer) for p in POS])
        neg = mx.stack([last_residual(hooked, p, layer) for p in NEG])
        assert ((pos - neg) @ vec > 0).mean().item() >= 0.5


def test_ablation_removes_the_component(hooked):
    d = compute_steering_vector(hooked, POS, NEG, 1)
    unit = d / mx.linalg.norm(d)
    _, before = hooked.run_with_cache(POS[0], ["residuals_1"])
    _, after = hooked.run_with_cache(POS[0], ["residuals_1"],
                                     hooks={"residuals_1": create_ablation_hook(d)})
    assert mx.abs(before["residuals_1"] @ unit).max().item() > 0.1
    assert mx.abs(after["residuals_1"] @ unit).max().item() < 1e-3
    rest = before["residuals_1"] - (before["residuals_1"] @ unit)[..., None] * unit
    assert mx.allclose(after["residuals_1"], rest, atol=1e-4).item()


def test_multi_layer_steering_hooks(hooked):
    vecs = extract_steering_vectors(hooked, POS, NEG, [1, 2])
    pairs = steering_hooks(vecs, 2.0)
    assert [n for n, _ in pairs] == ["residuals_1", "residuals_2"]
    same = steering_hooks(vecs[1], 2.0, layers=[0, 1, 3])
    assert [n for n, _ in same] == ["residuals_0", "residuals_1", "residuals_3"]
    sv = SteeringVector(directions=vecs)
    assert [n for n, _ in steering_hooks(sv, 1.0)] == ["residuals_1", "residuals_2"]
    with pytest.raises(ValueError, match=r"no vector for layers \[3\]"):
        steering_hooks(vecs, 1.0, layers=[3])


def test_contrastive_compare_equals_separate_generations(hooked):
    steer = ContrastiveSteering(hooked, POS, NEG, [1, 2])
    assert sorted(steer.vectors) == [1, 2]
    out = steer.compare("w15 w16", alphas=[0.0, 4.0, -4.0], max_tokens=8)
    assert list(out) == [0.0, 4.0, -4.0]
    tokens = hooked.tokenize("w15 w16").tokens[0].tolist()
    cache, logits = prefill_with_cache(hooked, tokens)
    baseline = hooked.tokenizer.decode(generate_from_cache(hooked, cache, logits, max_tokens=8))
    assert out[0.0] == baseline
    assert steer.generate("w15 w16", alpha=4.0, max_tokens=8) == out[4.0]
    assert out[4.0] != out[0.0] or out[-4.0] != out[0.0]
    everywhere = ContrastiveSteering(hooked, POS, NEG, 2, positions="all")
    assert everywhere.compare("w15 w16", alphas=[0.0], max_tokens=8)[0.0] == baseline
    assert steer.vector.layers == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positive": [], "negative": NEG}, "positive prompt list is empty"),
        ({"positive": POS, "negative": []}, "negative prompt list is empty"),
        ({"positive": "w5", "negative": NEG}, "must be a list of strings"),
        ({"positive": POS, "negative": ["", "w5"]}, "non-empty strings"),
        ({"positive": POS, "negative": NEG[:3], "method": "pca"}, "paired prompts"),
        ({"positive": POS, "negative": NEG, "method": "ica"}, "unknown method 'ica'"),
        ({"positive": POS, "negative": NEG, "layers": 9}, r"out of range.*0\.\.3"),
        ({"positive": POS, "negative": NEG, "layers": "mlp_1"}, "read from residuals_i"),
    ],
)
def test_extraction_errors(hooked, kwargs, message):
    kwargs = {"layers": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        extract_steering_vectors(hooked, kwargs.pop("positive"), kwargs.pop("negative"),
                                 **kwargs)


def test_vector_errors(hooked):
    with pytest.raises(ValueError, match="NaN or inf"):
        create_steering_hook(mx.array([1.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        create_steering_hook(mx.array([1.0, float("inf")]), 1.0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        create_steering_hook(mx.ones((4,)), float("nan"))
    with pytest.raises(ValueError, match="steering vector must be an array of numbers, got str"):
        create_steering_hook("happy", 1.0)
    wrong = {"residuals_1": create_steering_hook(mx.ones((hooked.hidden_size + 1,)), 1.0)}
    with pytest.raises(ValueError, match=f"size {hooked.hidden_size + 1} but residuals_1 has "
                                         f"hidden size {hooked.hidden_size}"):
        hooked.run_with_hooks("w15 w16", wrong)
    assert hooked.active_hooks() == {}
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        create_steering_hook(mx.ones((4,)), 1.0, positions="middle")
    with pytest.raises(ValueError, match="needs prompt_length"):
        create_steering_hook(mx.ones((4,)), 1.0, positions="generated")
    with pytest.raises(ValueError, match="zero vector"):
        create_ablation_hook(mx.zeros((4,)))


def test_chat_formatting_matches_the_template_applied_by_hand(hooked):
    tok = hooked.tokenizer

    def ids(p):
        return list(tok.apply_chat_template([{"role": "user", "content": p}],
                                            add_generation_prompt=True))

    assert hooked.encode_chat(POS[0]) == ids(POS[0])
    turns = [{"role": "user", "content": POS[0]}, {"role": "assistant", "content": NEG[0]},
             {"role": "user", "content": POS[1]}]
    assert hooked.encode_chat(turns) == list(tok.apply_chat_template(turns,
                                                                      add_generation_prompt=True))
    via_flag = compute_steering_vector(hooked, POS, NEG, 2, chat=True)
    last = {"reduce": lambda x: x[:, -1].astype(mx.float32)}
    pos = hooked.capture([ids(p) for p in POS], ["residuals_2"], **last)["residuals_2"]
    neg = hooked.capture([ids(p) for p in NEG], ["residuals_2"], **last)["residuals_2"]
    assert mx.allclose(via_flag, pos.mean(0) - neg.mean(0), rtol=1e-4, atol=1e-3).item()
    assert not mx.allclose(via_flag, compute_steering_vector(hooked, POS, NEG, 2)).item()
    with pytest.raises(ValueError, match="role, content"):
        hooked.encode_chat([{"role": "user"}])
