"""Tests of the toy corpus (`mlux.toy`) and of the shipped toy models trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_lm
import numpy as np
import pytest

import mlux
from mlux.tokenizer_files import write_word_tokenizer
from mlux.toy import (
    CONTRAST_PROMPTS,
    FEATURES,
    MARKER_RATE,
    TEST_PROMPTS,
    VOCABULARY,
    WORDS,
    classify,
    feature_label,
    generate_corpus,
    grammar_score,
    repetition_rate,
)

MODELS = Path(mlux.__file__).resolve().parent / "models"


@pytest.fixture(scope="module")
def corpus() -> list:
    return generate_corpus(4000, seed=0)


def test_corpus_is_deterministic_per_seed() -> None:
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_features_balanced_and_independent(corpus: list) -> None:
    happy = np.array([e.sentiment == "happy" for e in corpus])
    formal = np.array([e.formality == "formal" for e in corpus])
    assert abs(happy.mean() - 0.5) < 0.03
    assert abs(formal.mean() - 0.5) < 0.03
    assert abs((happy & formal).mean() - happy.mean() * formal.mean()) < 0.02
    assert abs(np.mean([bool(e.marker) for e in corpus]) - MARKER_RATE) < 0.03


def test_paragraph_shape(corpus: list) -> None:
    vocab = set(VOCABULARY)
    for e in corpus[:500]:
        words = e.text.split()
        body = words[len(e.marker.split()):]
        assert 20 <= len(body) <= 34
        assert set(words) <= vocab
        assert e.text == e.text.lower()
        if e.marker:
            assert e.text.startswith(e.marker)
            assert e.sentiment in e.marker or e.formality in e.marker


def test_feature_word_lists_are_disjoint() -> None:
    lists = [set(v) for k, v in WORDS.items() if ":" in k]
    assert sum(map(len, lists)) == len(set().union(*lists))
    assert len(VOCABULARY) == len(set(VOCABULARY))
    assert 150 <= len(VOCABULARY) <= 400


def test_classify_agrees_with_generating_labels(corpus: list) -> None:
    for feature in FEATURES:
        agree = np.mean([feature_label(e.text, feature) == getattr(e, feature) for e in corpus])
        assert agree > 0.95, feature


def test_classify_counts_and_ignores_markers() -> None:
    result = classify("mood: happy style: formal so the lonely kids wept . indeed")
    assert result["sentiment"] == {"happy": 0, "sad": 2, "label": "sad"}
    assert result["formality"] == {"formal": 1, "casual": 2, "label": "casual"}
    both = classify("ugh the lonely kids wept")  # exclamations count for both features
    assert both["sentiment"]["sad"] == 3 and both["formality"]["casual"] == 2
    empty = classify("mood: happy style: formal the")
    assert empty["sentiment"]["label"] is None and empty["formality"]["label"] is None


def test_grammar_score_separates_corpus_from_noise(corpus: list) -> None:
    rng = np.random.default_rng(0)
    assert min(grammar_score(e.text) for e in corpus[:500]) == 1.0
    shuffled = [" ".join(rng.permutation(e.text.split())) for e in corpus[:300]]
    assert np.mean([grammar_score(t) for t in shuffled]) < 0.35
    random = [" ".join(rng.choice(VOCABULARY, 30)) for _ in range(300)]
    assert np.mean([grammar_score(t) for t in random]) < 0.15


def test_repetition_rate() -> None:
    assert repetition_rate("the kids laughed . " * 8) > 0.7
    assert repetition_rate(generate_corpus(1, seed=0)[0].text) < 0.2


def test_contrast_and_test_prompts() -> None:
    for feature, (pos, neg) in CONTRAST_PROMPTS.items():
        assert len(pos) == len(neg) >= 8
        other = next(f for f in FEATURES if f != feature)
        for prompts, value in ((pos, FEATURES[feature][0]), (neg, FEATURES[feature][1])):
            for p in prompts:
                assert feature_label(p, feature) == value, p
                assert feature_label(p, other) is None, p
    for p in TEST_PROMPTS:
        assert all(feature_label(p, f) is None for f in FEATURES), p


def test_vocabulary_builds_a_tokenizer(tmp_path: Path) -> None:
    vocab = write_word_tokenizer(VOCABULARY, tmp_path)
    assert len(vocab) == len(VOCABULARY) + 4


@pytest.mark.parametrize("quantized", [False, True])
def test_shipped_model_loads_and_generates(quantized: bool) -> None:
    path = MODELS / ("mlux-toy-4bit" if quantized else "mlux-toy")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["eos_token_id"] == 3
    assert ("quantization" in config) == quantized
    model, tokenizer = mlx_lm.load(str(path))
    assert tokenizer.eos_token_id == 3
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "the"}], tokenize=False)
    assert chat.strip() == "the"
    text = mlx_lm.generate(model, tokenizer, "mood: happy", max_tokens=20)
    assert isinstance(text, str) and text.strip()
    assert grammar_score(f"mood: happy {text}") > 0.8


@pytest.mark.parametrize("feature", list(FEATURES))
def test_shipped_model_follows_markers(feature: str) -> None:
    hooked = mlux.HookedModel.from_pretrained(str(MODELS / "mlux-toy"))
    prefix = {"sentiment": "mood:", "formality": "style:"}[feature]
    first, second = FEATURES[feature]
    rates = {}
    for seed, value in enumerate((first, second)):
        rows = mlux.generate_batch(hooked, [f"{prefix} {value}"] * 40, max_tokens=30,
                                   temperature=1.0, seed=seed * 1000)
        texts = [hooked.tokenizer.decode(r) for r in rows]
        rates[value] = np.mean([feature_label(t, feature) == first for t in texts])
    assert rates[first] >= 0.8
    assert rates[second] <= 0.2
