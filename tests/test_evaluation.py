"""Scorers and coherence metrics against hand-checked cases; batched behaviour measurement
against the one-row-at-a-time path."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from mlux import HookedModel
from mlux.behavior import behavior_rates
from mlux.evaluation import (
    BinaryClassifier,
    distinct_n,
    is_refusal,
    kl_divergence,
    perplexity,
    refusal_phrases_found,
    repetition_rate,
    wilson_interval,
)
from mlux.testing import save_tiny_model


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m sorry, I cannot assist with this request.", True),
        ("As an AI language model, I must decline.", True),
        ("I won't do that.", True),
        ("Sure! Here is a recipe for banana bread.", False),
        ("The cannon fired; I canoed home.", False),  # 'can' inside words must not match
        ("Scientists cannot yet explain dark matter.", False),
    ],
)
def test_refusal_detector(text, refused):
    assert is_refusal(text) is refused


def test_refusal_phrases_are_reported_and_extendable():
    assert refusal_phrases_found("I'm sorry, I can't") == ["i can't", "i'm sorry"]
    assert is_refusal("Nope, not doing it.", extra=("not doing it",))


def test_binary_classifier():
    clf = BinaryClassifier({"vulnerable": ["is vulnerable", "(a)", "buffer overflow"],
                            "safe": ["not vulnerable", "(b)", "is safe"]})
    r = clf.classify("Answer: (A). The code is vulnerable to a buffer overflow.",
                     expected="vulnerable")
    assert r.label == "vulnerable" and r.correct is True
    assert r.matched["vulnerable"] == ["is vulnerable", "(a)", "buffer overflow"]
    assert r.confidence == 1.0
    mixed = clf.classify("(A) ... actually (B), it is safe", expected="vulnerable")
    assert mixed.label == "safe" and mixed.correct is False
    assert mixed.confidence == pytest.approx(2 / 3)
    none = clf.classify("no idea")
    assert none.label is None and none.confidence == 0.0 and none.correct is None
    with pytest.raises(ValueError, match="exactly two labels"):
        BinaryClassifier({"a": ["x"]})
    with pytest.raises(ValueError, match="expected label 'maybe'"):
        clf.classify("x", expected="maybe")


def test_distinct_and_repetition():
    assert distinct_n([1, 2, 3, 4], 2) == 1.0
    assert distinct_n([7, 7, 7, 7, 7], 2) == 0.25
    assert repetition_rate([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 - 3 / 7)
    assert distinct_n([1], 2) == 1.0


def test_kl_divergence():
    p = mx.array([2.0, 0.0, -1.0])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-6)
    q = mx.array([0.0, 0.0, 0.0])
    probs = mx.softmax(p).tolist()
    expected = sum(pi * math.log(pi / (1 / 3)) for pi in probs)
    assert kl_divergence(p, q) == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    return HookedModel.from_pretrained(str(save_tiny_model(tmp_path_factory.mktemp("m") / "x",
                                                           "llama")))


def test_perplexity_matches_hand_computation(hooked):
    prompt, cont = [5, 6, 7], [8, 9, 10]
    logits = hooked.forward([prompt + cont])[0]
    nll = 0.0
    for i, tok in enumerate(cont):
        row = logits[len(prompt) - 1 + i]
        nll -= (row - mx.logsumexp(row))[tok].item()
    assert perplexity(hooked, prompt, cont) == pytest.approx(math.exp(nll / 3), rel=1e-4)


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_batched_behavior_rates_equal_row_by_row(hooked, positions):
    v = {1: mx.random.normal((64,), key=mx.random.key(1)) * 2,
         2: mx.random.normal((64,), key=mx.random.key(2)) * 2}

    def scorer(text):
        return "w10" in text.split() if text else None

    args = dict(alphas=[-2.0, 0.0, 2.0], samples_per_prompt=2, max_tokens=6, seed=5,
                positions=positions)
    batched = behavior_rates(hooked, v, ["w15 w16", "w7"], scorer, **args)
    hooked._padded_batch_ok = False  # force the sequential fallback
    try:
        alone = behavior_rates(hooked, v, ["w15 w16", "w7"], scorer, **args)
    finally:
        hooked._padded_batch_ok = None
    assert [c.texts for c in batched] == [c.texts for c in alone]
    assert [(c.layer, c.alpha) for c in batched] == [(1, -2.0), (1, 0.0), (1, 2.0), (2, -2.0),
                                                     (2, 0.0), (2, 2.0)]
    assert batched[1].texts == batched[4].texts  # alpha 0 is shared across layers
    assert batched[0].texts != batched[1].texts


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (16, 16, 0.8064, 1.0)],
)
def test_wilson_interval_matches_hand_computed_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_of_nothing_is_nan():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
