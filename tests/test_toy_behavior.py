"""Steering changes the built-in model's *behaviour*: the steered feature's rate moves to the
extremes, the other feature stays near its base rate, and a huge push breaks coherence.

Alphas are the calibrated ones from the model card's steering table (formality's vector is
longer relative to the stream, so it needs less); 64 seeded temperature-1 samples per cell.
"""

from __future__ import annotations

import pytest

from mlux import HookedModel, extract_steering_vectors
from mlux.behavior import behavior_rates
from mlux.toy import CONTRAST_PROMPTS, FEATURES, TEST_PROMPTS, feature_label, grammar_score

CASES = {"sentiment": (2, 2.0), "formality": (3, 0.75)}  # feature -> (layer, alpha)
OTHER = {"sentiment": "formality", "formality": "sentiment"}


def rate(texts, feature):
    target = FEATURES[feature][0]
    labels = [feature_label(t, feature) for t in texts]
    known = [label for label in labels if label is not None]
    return sum(label == target for label in known) / len(known)


@pytest.fixture(scope="module", params=["mlux-toy", "mlux-toy-4bit"])
def hooked(request):
    return HookedModel.from_pretrained(request.param)


@pytest.mark.parametrize("feature", list(CASES))
def test_steering_moves_one_feature_and_leaves_the_other(hooked, feature):
    layer, alpha = CASES[feature]
    pos, neg = CONTRAST_PROMPTS[feature]
    vectors = extract_steering_vectors(hooked, pos, neg, [layer])
    minus, base, plus = behavior_rates(
        hooked, vectors, TEST_PROMPTS, None, alphas=[-alpha, 0.0, alpha], samples_per_prompt=8,
        max_tokens=24, seed=1, keep_texts=10_000, positions="all")
    assert 0.25 <= rate(base.texts, feature) <= 0.75  # unsteered: near its base rate
    assert rate(plus.texts, feature) >= 0.90
    assert rate(minus.texts, feature) <= 0.10
    other = OTHER[feature]
    for steered in (minus, plus):
        assert abs(rate(steered.texts, other) - rate(base.texts, other)) <= 0.15
        assert sum(map(grammar_score, steered.texts)) / len(steered.texts) > 0.9  # still fluent


def test_huge_alpha_breaks_coherence(hooked):
    layer, _ = CASES["sentiment"]
    pos, neg = CONTRAST_PROMPTS["sentiment"]
    vectors = extract_steering_vectors(hooked, pos, neg, [layer])
    base, huge = behavior_rates(hooked, vectors, TEST_PROMPTS, None, alphas=[0.0, 8.0],
                                samples_per_prompt=2, max_tokens=24, seed=1, keep_texts=10_000,
                                positions="all")
    fluent = sum(map(grammar_score, base.texts)) / len(base.texts)
    broken = sum(map(grammar_score, huge.texts)) / len(huge.texts)
    assert fluent > 0.95 and broken < 0.6  # out-of-grammar word pairs take over
