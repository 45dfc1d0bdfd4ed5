"""The experiments on the built-in model find what the model's behaviour shows directly."""

from __future__ import annotations

import pytest

from mlux import HookedModel, extract_steering_vectors
from mlux.behavior import behavior_rates
from mlux.experiments.alpha_calibration import alpha_calibration
from mlux.experiments.layer_sweep import layer_sweep
from mlux.experiments.options import resolve_scorer
from mlux.experiments.strength_sweep import strength_sweep
from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS, grammar_score

POS, NEG = CONTRAST_PROMPTS["sentiment"]


@pytest.fixture(scope="module")
def hooked():
    return HookedModel.from_pretrained("mlux-toy")


@pytest.fixture(scope="module")
def scorer():
    return resolve_scorer("toy:sentiment=happy", "mlux-toy")[0]


def test_layer_sweep_ranks_steerable_layers_above_the_first_block(hooked, scorer):
    res = layer_sweep(hooked, (POS, NEG), TEST_PROMPTS, scorer, alpha=0.75,
                      samples_per_prompt=2)
    effects = {r["layer"]: r["effect"] for r in res.rows}
    assert 0 not in res.best_layers[:2]  # steerable layers first (0 may fill a later slot)
    assert all(effects[b] > effects[0] + 0.2 for b in res.best_layers if b != 0)
    assert res.best_layers[0] in (1, 2)
    assert 0.25 <= res.baseline_rate <= 0.75


def test_calibration_finds_the_breakdown_a_direct_sweep_shows(hooked):
    layer, grid = 2, [1.0, 2.0, 4.0, 8.0, 16.0]
    cal = alpha_calibration(hooked, (POS, NEG), TEST_PROMPTS[:4], layers=[layer], alphas=grid,
                            samples_per_prompt=2, max_tokens=16)
    (row,) = cal.layers
    assert row["degenerates_at"] is not None
    # Direct: the toy grammar (which calibration never looks at) over the same pushes.
    vectors = extract_steering_vectors(hooked, POS, NEG, [layer])
    cells = behavior_rates(hooked, vectors, TEST_PROMPTS[:4], None, alphas=grid,
                           samples_per_prompt=2, max_tokens=16, keep_texts=100)
    grammar = {c.alpha: sum(map(grammar_score, c.texts)) / len(c.texts) for c in cells}
    assert grammar[row["max_safe_alpha"]] >= 0.85  # still fluent where calibration says safe
    assert grammar[row["degenerates_at"]] <= 0.8  # visibly broken where it says it breaks
    assert cal.c == pytest.approx(row["max_safe_alpha"] * row["vector_norm"])
    # what tripped is named where it tripped: perplexity under the unsteered model sees it
    hit = next(m for m in row["sweep"] if m["degenerate"])
    assert hit["alpha"] == row["degenerates_at"] and "perplexity" in hit["degenerate"]
    assert not cal.lower_bound


def test_random_direction_moves_behavior_far_less(hooked, scorer):
    vectors = extract_steering_vectors(hooked, POS, NEG, [2])
    rows = strength_sweep(hooked, vectors, TEST_PROMPTS, scorer, strengths=[-2.0, 0.0, 2.0],
                          samples_per_prompt=2)
    base = rows[1]["behavior_rate"]
    real = max(abs(r["behavior_rate"] - base) for r in rows)
    control = max(abs(r["control_rate"] - base) for r in rows)
    assert real >= 0.4 and control <= 0.2 and control < real / 2
