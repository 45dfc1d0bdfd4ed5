"""The condition search (F1 per cell against conditions built and fired one by one), the verbs
`mlux condition-search` and `mlux generate --condition`, and the behaviour rates on the
built-in model (formal prompts steered as always, casual ones at the base rate)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlux import HookedModel, Steering, cli, extract_steering_vectors, generate_batch
from mlux.condition_search import f1_score, find_condition_point
from mlux.conditions import Condition
from mlux.evaluation import wilson_interval
from mlux.toy import CONTRAST_PROMPTS, feature_scorer

FORMAL = ["furthermore the garden was remarkably", "yesterday the delegates felt notably",
          "moreover the market was exceedingly", "tonight the officials felt profoundly"]
CASUAL = ["so the garden was super", "today the pals felt kinda",
          "anyway the market was totally", "tonight the buddies felt pretty"]


@pytest.fixture(scope="module")
def toy():
    hooked = HookedModel.from_pretrained("mlux-toy")
    formality = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["formality"],
                                         list(range(hooked.num_layers)))
    return hooked, formality


@pytest.mark.parametrize(("pred", "actual", "want"), [
    ([True, True, False, False], [True, False, True, False], 0.5),  # tp 1, fp 1, fn 1
    ([True, True, True], [True, True, True], 1.0),
    ([False, False], [True, False], 0.0),
    ([True, False, True, True], [True, True, True, False], 2 * 2 / (2 * 2 + 1 + 1)),
])
def test_f1_score(pred, actual, want):
    assert f1_score(pred, actual) == pytest.approx(want)


def test_every_cell_is_the_f1_of_that_condition_fired_alone(toy):
    hooked, formality = toy
    result = find_condition_point(hooked, FORMAL, CASUAL, [0, 1, 3], vector=formality)
    actual = [True] * 4 + [False] * 4
    rng = np.random.default_rng(0)
    cells = [(c, i, j) for c in result.comparators for i in range(3)
             for j in range(len(result.thresholds))]
    for c, i, j in [cells[k] for k in rng.choice(len(cells), 6, replace=False)]:
        cond = Condition(formality, result.layers[i], result.thresholds[j], c)
        assert result.f1[c][i][j] == pytest.approx(
            f1_score(cond.fires(hooked, FORMAL + CASUAL), actual), abs=1e-6)
    best = result.best
    assert result.best_f1 == max(v for c in result.f1.values() for row in c for v in row)
    assert f1_score(best.fires(hooked, FORMAL + CASUAL), actual) == pytest.approx(result.best_f1)
    assert result.best_f1 >= 0.9


def test_search_extracts_its_own_vector_and_refuses_bad_grids(toy):
    hooked, _ = toy
    result = find_condition_point(hooked, FORMAL, CASUAL, [1], thresholds=[0.0, 0.05])
    assert result.thresholds == [0.0, 0.05] and result.layers == [1]
    with pytest.raises(ValueError, match="unknown comparator 'above'; valid: larger, smaller"):
        find_condition_point(hooked, FORMAL, CASUAL, [1], comparators=["above"])
    with pytest.raises(ValueError, match="finite"):
        find_condition_point(hooked, FORMAL, CASUAL, [1], thresholds=[float("nan")])


def test_condition_search_verb_writes_json_plot_and_condition(tmp_path, capsys):
    out = tmp_path / "search.json"
    cond_file = tmp_path / "formal.safetensors"
    assert cli.main(["condition-search", "--feature", "formality", "--layers", "0-2",
                     "--output", str(out), "--save-condition", str(cond_file)]) == 0
    data = json.loads(out.read_text())
    assert data["layers"] == [0, 1, 2] and set(data["f1"]) == {"larger", "smaller"}
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = Condition.load(cond_file)
    assert (back.layer, back.threshold, back.comparator) == (
        data["best"]["layer"], data["best"]["threshold"], data["best"]["comparator"])
    assert cli.main(["condition-search", "--comparators", "above", "--output",
                     str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "mlux condition-search: error: --comparators: unknown 'above'; valid: larger, smaller"]


def test_generate_with_condition_steers_only_prompts_that_fire(toy, tmp_path, capsys):
    hooked, formality = toy
    happy = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [2])
    happy.save(tmp_path / "happy.safetensors")
    cond = Condition(formality, 1, 0.05)
    cond.save(tmp_path / "formal.safetensors")
    for prompt, fired in ((FORMAL[0], True), (CASUAL[0], False)):
        capsys.readouterr()
        assert cli.main(["generate", prompt, "--vector", str(tmp_path / "happy.safetensors"),
                         "--alpha", "2", "--condition", str(tmp_path / "formal.safetensors"),
                         "--max-tokens", "8"]) == 0
        captured = capsys.readouterr()
        ids = generate_batch(hooked, [prompt], max_tokens=8,
                             steering=[Steering(happy, 2.0, condition=cond)])[0]
        assert captured.out == hooked.tokenizer.decode(ids) + "\n"
        assert ("condition fired" if fired else "condition did not fire") in captured.err
    assert cli.main(["generate", "the", "--vector", str(tmp_path / "happy.safetensors"),
                     "--condition", str(tmp_path / "happy.safetensors")]) == 2
    assert "carries no condition" in capsys.readouterr().err


def happy_rate(hooked, prompts, steering):
    rows = [p for p in prompts for _ in range(6)]
    outs = generate_batch(hooked, rows, max_tokens=16, temperature=1.0, seed=5,
                          steering=None if steering is None else [steering] * len(rows))
    verdicts = [feature_scorer("sentiment", "happy")(hooked.tokenizer.decode(o)) for o in outs]
    labelled = [v for v in verdicts if v is not None]
    return sum(labelled), len(labelled)


def test_happy_rate_rises_on_formal_prompts_only(toy):
    """Sampled: with the condition, formal prompts get the happy rate of unconditional steering
    and casual ones keep the base rate (inside its Wilson interval); the complement swaps."""
    hooked, formality = toy
    happy = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [2])
    cond = Condition(formality, 1, 0.05)
    assert cond.fires(hooked, FORMAL) == [True] * 4 and cond.fires(hooked, CASUAL) == [False] * 4
    for prompts, gate in ((FORMAL, cond), (CASUAL, cond.flipped())):
        base = happy_rate(hooked, prompts, None)
        always = happy_rate(hooked, prompts, Steering(happy, 2.0, positions="generated"))
        steered = happy_rate(hooked, prompts, Steering(happy, 2.0, condition=gate))
        held = happy_rate(hooked, prompts, Steering(happy, 2.0, condition=gate.flipped()))
        assert steered == always  # fired: what the unconditional term gives, sample for sample
        lo, hi = wilson_interval(*base)
        assert steered[0] / steered[1] > hi
        assert lo <= held[0] / held[1] <= hi



def test_bench_condition_quick_writes_its_report(tmp_path, monkeypatch):
    """experiments/bench_condition.py end to end in quick mode: the report's shape (never a
    timing) and the identity it checks (a condition firing everywhere == the plain term)."""
    import importlib.util
    import sys
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    monkeypatch.syspath_prepend(str(experiments))
    spec = importlib.util.spec_from_file_location("bench_condition",
                                                  experiments / "bench_condition.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_condition", module)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    result = module.main(["--quick", "--output", str(out)])
    saved = json.loads(out.read_text())
    for part in ("end_to_end", "prefill"):
        assert saved[part]["outputs_identical"] is True
        assert saved[part]["conditional_over_plain"]["cpu"]["median"] > 0
    assert result["table"] == saved["table"]


def test_chat_search_scores_the_prompts_in_the_chat_template(tmp_path):
    """With chat=True the prompts are extracted and scored as the model's chat template wraps
    them (hooked.encode_chat), not as raw text."""
    from mlux.testing import save_tiny_model

    hooked = HookedModel.from_pretrained(str(save_tiny_model(tmp_path / "m", "llama")))
    pos = ["w10 w11 w12", "w13 w14 w15", "w16 w17 w18"]
    neg = ["w20 w21 w22", "w23 w24 w25", "w26 w27 w28"]
    result = find_condition_point(hooked, pos, neg, [1], thresholds=[-0.5, 0.0, 0.5],
                                  chat=True)
    wrapped = [hooked.encode_chat(p) for p in pos + neg]
    vec = extract_steering_vectors(hooked, pos, neg, [1], chat=True)
    for j, t in enumerate(result.thresholds):
        cond = Condition(vec, 1, t)
        assert result.f1["larger"][0][j] == pytest.approx(
            f1_score(cond.fires(hooked, wrapped), [True] * 3 + [False] * 3), abs=1e-6)


def test_best_cell_separates_held_out_prompts(toy):
    """The cell chosen on one set of formal / casual prompts (two cues each, or one) gates
    another set (other words and places) with F1 >= 0.9."""
    hooked, formality = toy
    search_formal = FORMAL + ["the family remarked that the town was", "furthermore it was a"]
    search_casual = CASUAL + ["the family reckoned that the town was", "so it was a"]
    best = find_condition_point(hooked, search_formal, search_casual, vector=formality).best
    formal = ["consequently the harbour was considerably", "afterwards the delegates felt "
              "remarkably", "the visitors noted that the museum was", "indeed it was a"]
    casual = ["honestly the harbour was seriously", "afterwards the guys felt super",
              "the visitors figured that the museum was", "yeah it was a"]
    fired = best.fires(hooked, formal + casual)
    assert f1_score(fired, [True] * 4 + [False] * 4) >= 0.9
