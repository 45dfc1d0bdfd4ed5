"""The built-in toy world: a synthetic two-feature corpus and the small model trained on it.

`mlux/models/mlux-toy` (fp32) and `mlux/models/mlux-toy-4bit` were trained on this corpus by
`experiments/train_toy_model.py` (`mlux.builtin.builtin_model_path("mlux-toy")`); `classify`
scores the behaviour of their generations.
"""

from __future__ import annotations

from mlux.toy.corpus import (
    ALLOWED_BIGRAMS,
    CONTRAST_PROMPTS,
    FEATURES,
    MARKER_PREFIX,
    MARKER_RATE,
    TEMPLATES,
    TEST_PROMPTS,
    VOCABULARY,
    WORDS,
    Example,
    classify,
    feature_label,
    generate_corpus,
    generate_paragraph,
    grammar_score,
    repetition_rate,
)

__all__ = [
    "ALLOWED_BIGRAMS",
    "CONTRAST_PROMPTS",
    "FEATURES",
    "MARKER_PREFIX",
    "MARKER_RATE",
    "TEMPLATES",
    "TEST_PROMPTS",
    "VOCABULARY",
    "WORDS",
    "Example",
    "classify",
    "feature_label",
    "generate_corpus",
    "generate_paragraph",
    "grammar_score",
    "repetition_rate",
]

