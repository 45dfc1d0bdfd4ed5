"""`mlux.search` on the built-in model: the objectives against independent references (per-prompt
KL from `kl_divergence`, the layer sweep's alpha, batched == one trial at a time), the
generation-free score against the sampled rate, the search's reproducibility and resume, and
the picked trial as a vector the other tools read."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from mlux import HookedModel, SteeringVector, generate_batch
from mlux.evaluation import first_token_kl, first_token_logits, kl_divergence
from mlux.experiments.common import residual_norms, sweep_directions
from mlux.hooks import HookContext
from mlux.search import (
    SearchSpace,
    TrialScorer,
    ablation_hooks,
    behavior_words,
    interpolated_direction,
    layer_weights,
    pareto_front,
    search,
    steering_of,
    token_ids,
)
from mlux.search.result import Trial
from mlux.steering import Steering, create_ablation_hook, steering_hooks
from mlux.testing import save_tiny_model
from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS, feature_scorer

HAPPY = feature_scorer("sentiment", "happy")
SMALL = dict(samples=1, max_tokens=8)


@pytest.fixture(scope="module")
def toy():
    return HookedModel.from_pretrained("mlux-toy")


@pytest.fixture(scope="module")
def setup(toy):
    directions, acts = sweep_directions(toy, CONTRAST_PROMPTS["sentiment"])
    residual = residual_norms(toy, list(directions), acts, TEST_PROMPTS)
    ids = [toy.tokenize(p).tokens[0].tolist() for p in TEST_PROMPTS]
    return directions, residual, ids


def _scorer(toy, setup, mode="steer", **kw) -> TrialScorer:
    directions, residual, ids = setup
    return TrialScorer(toy, mode, directions, residual, ids, ids, HAPPY, **{**SMALL, **kw})


def test_first_token_kl_equals_per_prompt_kl_divergence(toy, setup):
    directions = setup[0]
    hooks = steering_hooks({2: directions[2]}, 1.5)
    got = first_token_kl(toy, list(TEST_PROMPTS), hooks, per_prompt=True)
    for p, value in zip(TEST_PROMPTS, got, strict=True):
        base = toy.run_with_hooks(p, None)[0, -1]
        steered = toy.run_with_hooks(p, hooks)[0, -1]
        assert value == pytest.approx(kl_divergence(base, steered), rel=1e-3, abs=1e-6)
    assert first_token_kl(toy, list(TEST_PROMPTS), hooks) == pytest.approx(sum(got) / len(got))
    assert first_token_kl(toy, list(TEST_PROMPTS)) == 0.0  # no hooks: the reference itself


def test_kl_is_zero_at_strength_zero_and_grows_with_strength(toy, setup):
    scorer = _scorer(toy, setup)
    strengths = [0.0, 0.1, 0.3, 0.6, 1.0]
    got = scorer.measure([{"layer": 2.0, "strength": s, "window": "all"} for s in strengths])
    kls = [m.kl for m in got]
    assert kls[0] == 0.0
    assert all(b > a for a, b in zip(kls, kls[1:], strict=False)), kls


def test_trials_in_one_batch_equal_trials_alone(toy, setup):
    scorer = _scorer(toy, setup, temperature=0.0)
    trials = [{"layer": 1.5, "strength": 0.4, "window": "all"},
              {"layer": 3.0, "strength": 0.2, "window": "generated"},
              {"layer": 2.2, "strength": 0.5, "window": "prompt"}]
    together = scorer.measure(trials)
    for params, m in zip(trials, together, strict=True):
        (alone,) = scorer.measure([params])
        assert alone.behavior == m.behavior
        assert alone.kl == pytest.approx(m.kl, rel=1e-3, abs=1e-6)
        assert alone.extras["texts"] == m.extras["texts"]


def test_a_trial_is_the_layer_sweeps_alpha_at_its_layer(setup):
    directions, residual, _ = setup
    steer = steering_of({"layer": 2.0, "strength": 0.3, "window": "all"}, directions, residual, 6)
    v = directions[2]
    alpha = 0.3 * residual[2] / float(mx.linalg.norm(v).item())  # layer_sweep's relative alpha
    (layer, delta), = steer.per_layer().items()
    assert layer == 2 and steer.alpha == 1.0 and steer.positions == "all"
    assert mx.allclose(delta, alpha * v, atol=1e-5)


def test_fractional_layer_interpolates_neighbouring_directions(setup):
    directions = setup[0]
    unit = {i: v / mx.linalg.norm(v) for i, v in directions.items()}
    assert mx.allclose(interpolated_direction(directions, 3.0), unit[3], atol=1e-6)
    mid = interpolated_direction(directions, 2.25)
    expected = 0.75 * unit[2] + 0.25 * unit[3]
    assert mx.allclose(mid, expected / mx.linalg.norm(expected), atol=1e-6)
    assert float(mx.linalg.norm(mid).item()) == pytest.approx(1.0)


def test_layer_weights_follow_the_kernel():
    assert layer_weights({"layer": 2.4}, 6) == {2: 1.0}
    w = layer_weights({"layer": 2.6, "distance": 2.0, "min_weight": 0.2, "max_weight": 0.5}, 6)
    # centre round(2.6) = 3; one layer away 1 - 0.8 / 2, two away the floor 0.2; times 0.5
    assert w == pytest.approx({1: 0.1, 2: 0.3, 3: 0.5, 4: 0.3, 5: 0.1})
    assert layer_weights({"layer": 0.0, "max_weight": 0.0}, 6) == {}


def test_weighted_ablation_removes_that_share_of_the_component(toy, setup):
    u = interpolated_direction(setup[0], 2.0)
    x = mx.random.normal((1, 3, toy.hidden_size), key=mx.random.key(0))
    ctx = HookContext("mlp_1", 1, length=3)
    for w in (1.0, 0.5, 0.0):
        out = create_ablation_hook(u, weight=w)(x, ctx)
        assert mx.allclose(out @ u, (1 - w) * (x @ u), atol=1e-4)
    every = {"layer": 2.0, "max_weight": 1.0, "distance": 6.0, "min_weight": 1.0, "window": "all"}
    hooks = ablation_hooks(every, setup[0], 6)
    assert sorted(n for n, _ in hooks) == sorted(f"{k}_{i}" for i in range(6)
                                                 for k in ("attention", "mlp"))
    none = _scorer(toy, setup, "ablate").measure(
        [{**every, "max_weight": 0.0}])[0]
    assert none.kl == 0.0


def test_logodds_agrees_in_sign_with_the_sampled_rate(toy, setup):
    target, against = behavior_words("toy:sentiment=happy")
    tok = toy.tokenizer
    sampled = _scorer(toy, setup, samples=3, max_tokens=16)
    logodds = _scorer(toy, setup, score="logodds", target=token_ids(tok, target),
                      against=token_ids(tok, against))
    trials = [{"layer": 2.0, "strength": s, "window": "all"} for s in (-0.4, 0.0, 0.4)]
    rates = [m.behavior for m in sampled.measure(trials)]
    scores = [m.extras["logodds"] for m in logodds.measure(trials)]
    for k in (0, 2):
        assert math.copysign(1, rates[k] - rates[1]) == math.copysign(1, scores[k] - scores[1])
        assert rates[k] != rates[1]
    assert rates[0] < rates[1] < rates[2]


def test_pareto_front_keeps_only_undominated_trials():
    pts = [(0.1, 0.5), (0.05, 0.5), (0.2, 0.9), (0.3, 0.8), (0.0, 0.4), (0.2, 0.9)]
    trials = [Trial(i, {}, b, k) for i, (k, b) in enumerate(pts)]
    assert [t.number for t in pareto_front(trials, maximize=True)] == [4, 1, 2]
    assert [t.number for t in pareto_front(trials, maximize=False)] == [4]


def _search(toy, **kw):
    args = dict(harmless=list(TEST_PROMPTS), trials=5, seed=3, batch=2, **SMALL)
    return search(toy, CONTRAST_PROMPTS["sentiment"], list(TEST_PROMPTS), HAPPY,
                  **{**args, **kw})


def test_same_seed_gives_the_same_front(toy):
    a, b = _search(toy), _search(toy)
    assert [(t.params, t.behavior, t.kl) for t in a.front] == \
        [(t.params, t.behavior, t.kl) for t in b.front]
    assert len(a.trials) == 5 and a.front


def test_interrupt_and_rerun_gives_exactly_n_trials_none_repeated(toy, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = TrialScorer.measure

    def interrupted(self, trials):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C while the second batch is being measured
            raise KeyboardInterrupt
        return real(self, trials)

    monkeypatch.setattr(TrialScorer, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _search(toy, trials=6, out=tmp_path / "s")
    monkeypatch.setattr(TrialScorer, "measure", real)
    res = _search(toy, trials=6, out=tmp_path / "s")
    assert len(res.trials) == 6
    keys = [tuple(sorted(t.params.items())) for t in res.trials]
    assert len(set(keys)) == 6
    again = _search(toy, trials=6, out=tmp_path / "s")  # complete: nothing more is run
    assert [t.number for t in again.trials] == [t.number for t in res.trials]


def test_rerun_with_other_settings_is_refused_naming_the_change(toy, tmp_path):
    _search(toy, trials=2, out=tmp_path / "s")
    with pytest.raises(ValueError, match=r"another study \(samples: 1 before, 2 now"):
        _search(toy, trials=2, out=tmp_path / "s", samples=2)
    with pytest.raises(ValueError, match="mode: 'steer' before, 'ablate' now"):
        _search(toy, trials=2, out=tmp_path / "s", mode="ablate")
    assert len(_search(toy, trials=2, out=tmp_path / "s", samples=2, fresh=True).trials) == 2


@pytest.mark.parametrize("kw, message", [
    (dict(trials=0), "trials must be a positive integer"),
    (dict(mode="abliterate"), "unknown mode 'abliterate'; choose from steer, ablate"),
    (dict(harmless=[]), "at least one harmless prompt"),
    (dict(space=SearchSpace(windows=("later",))), "unknown window"),
    (dict(samples=0), "samples must be a positive integer, got 0"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(space=SearchSpace(layers=(2.0, 9.0))), r"layer range 2-9 is outside the model's "
                                                 r"layers 0-5"),
])
def test_bad_input_is_one_clear_error(toy, kw, message):
    with pytest.raises(ValueError, match=message):
        _search(toy, **kw)


def test_vector_of_another_model_is_refused(toy):
    other = SteeringVector({1: mx.ones((8,))}, model_id="other")
    with pytest.raises(ValueError, match="hidden size 8 does not match"):
        search(toy, other, ["the"], HAPPY, harmless=["the"], trials=1)


def test_picked_steer_trial_generates_as_the_search_steered(toy, tmp_path):
    res = _search(toy, space=SearchSpace(windows=("all",), kernel=True))
    trial = max(res.trials, key=lambda t: len(layer_weights(t.params, 6)))
    vec = res.to_vector(trial)
    vec.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert loaded.metadata["search"]["window"] == "all"
    assert sorted(loaded.layers) == sorted(layer_weights(trial.params, 6))
    directions, residual = res.directions, res.residual
    row = steering_of(trial.params, directions, residual, 6)
    ref = generate_batch(toy, ["the"], max_tokens=10, steering=[row])
    # `mlux generate --vector` applies a file as steering_hooks(vector, alpha=1, its layers)
    got = generate_batch(toy, ["the"], max_tokens=10, hooks=steering_hooks(loaded, 1.0))
    assert got == ref
    base = first_token_logits(toy, ["the"])
    assert first_token_kl(toy, ["the"], steering_hooks(loaded, 1.0), reference=base) > 0


def test_picked_ablation_is_the_direction_with_its_weights(toy):
    res = _search(toy, mode="ablate", trials=3, space=SearchSpace(kernel=True))
    t = res.best()
    vec = res.to_vector(t)
    assert vec.layers == [int(round(t.params["layer"]))]
    assert float(mx.linalg.norm(vec[vec.layers[0]]).item()) == pytest.approx(1.0, abs=1e-5)
    weights = vec.metadata["search"]["layer_weights"]
    assert {int(k): w for k, w in weights.items()} == pytest.approx(layer_weights(t.params, 6))


def test_avoid_prompts_rate_is_a_third_objective(toy, setup):
    directions, residual, ids = setup
    sad = [toy.tokenize(p).tokens[0].tolist() for p in ("mood: sad", "mood: sad the")]
    with_avoid = TrialScorer(toy, "steer", directions, residual, ids, ids, HAPPY, avoid=sad,
                             **SMALL)
    on_sad = TrialScorer(toy, "steer", directions, residual, sad, ids, HAPPY, **SMALL)
    trials = [{"layer": 2.0, "strength": s, "window": "all"} for s in (0.0, 0.6)]
    for m, ref in zip(with_avoid.measure(trials), on_sad.measure(trials), strict=True):
        assert m.extras["false_positive"] == ref.behavior  # the same rows, the same seeds
    # A trial worse on behaviour and KL stays on the front when it has fewer false positives.
    a = Trial(0, {}, 0.9, 0.1, {"false_positive": 0.8})
    b = Trial(1, {}, 0.8, 0.2, {"false_positive": 0.1})
    c = Trial(2, {}, 0.7, 0.3, {"false_positive": 0.5})
    assert [t.number for t in pareto_front([a, b, c], maximize=True)] == [0, 1]
    res = _search(toy, trials=3, avoid=["mood: sad"])
    assert all("false_positive" in t.extras for t in res.trials)
    with pytest.raises(ValueError, match="avoid prompts .* go with mode steer"):
        _search(toy, trials=1, mode="ablate", avoid=["mood: sad"])


def test_ablation_trial_kl_equals_each_prompt_ablated_alone(toy, setup):
    directions, _, ids = setup
    params = {"layer": 1.5, "max_weight": 1.0, "distance": 5.0, "min_weight": 1.0,
              "window": "generated"}
    (m,) = _scorer(toy, setup, "ablate").measure([params])
    by_hand = []
    for p in ids:  # prompts of different lengths, each with its own window
        hooks = ablation_hooks(params, directions, 6, len(p))
        by_hand.append(kl_divergence(toy.run_with_hooks([p], None)[0, -1],
                                     toy.run_with_hooks([p], hooks)[0, -1]))
    assert len({len(p) for p in ids}) > 1
    # float32 logits of differently shaped batches round differently: KLs agree to ~1e-6
    assert m.kl == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-2, abs=1e-6)
    assert m.kl > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt_bigcode"])  # padded batch / rows one by one
def test_per_row_steered_kl_equals_each_row_steered_alone(tmp_path, arch):
    hooked = HookedModel.from_pretrained(str(save_tiny_model(tmp_path / arch, arch)))
    d = mx.random.normal((hooked.hidden_size,), key=mx.random.key(4))
    prompts = ["w9 w13", "w15 w16 w17", "w8"]
    rows = [Steering({1: d}, 1.5, positions="generated"), None, Steering({0: d, 2: d}, -1.0)]
    got = first_token_kl(hooked, prompts, steering=rows, per_prompt=True)
    for p, row, value in zip(prompts, rows, got, strict=True):
        n = len(hooked.tokenize(p).tokens[0])
        hooks = None if row is None else steering_hooks(
            row.vector, row.alpha, positions=row.positions, prompt_length=n)
        ref = kl_divergence(hooked.run_with_hooks(p, None)[0, -1],
                            hooked.run_with_hooks(p, hooks)[0, -1])
        assert value == pytest.approx(ref, rel=1e-3, abs=1e-5)
    assert got[1] == pytest.approx(0.0, abs=1e-6) and got[0] > 0 and got[2] > 0


def test_a_saved_vector_is_searched_over_its_own_layers(toy, setup):
    vec = SteeringVector({i: setup[0][i] for i in (2, 3)}, model_id="mlux-toy")
    res = search(
        toy, vec, list(TEST_PROMPTS), HAPPY, harmless=list(TEST_PROMPTS), trials=3, seed=0,
        **SMALL)
    assert res.settings["space"]["layers"] == [2.0, 3.0]
    assert all(2.0 <= t.params["layer"] <= 3.0 for t in res.trials)
    wide = search(toy, vec, list(TEST_PROMPTS), HAPPY, harmless=list(TEST_PROMPTS), trials=3,
                  seed=0, space=SearchSpace(kernel=True, max_distance=5.0), **SMALL)
    assert any(t.params["distance"] >= 1 for t in wide.trials)
    for t in wide.trials:  # a profile reaching past the vector steers only where it has layers
        assert set(wide.to_vector(t).layers) <= {2, 3}
    gap = SteeringVector({i: setup[0][i] for i in (1, 3)})
    with pytest.raises(ValueError, match=r"no direction at layers \[2\] of the layer range 1-3"):
        search(toy, gap, ["the"], HAPPY, harmless=["the"], trials=1)
