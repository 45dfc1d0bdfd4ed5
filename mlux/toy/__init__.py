"""The built-in toy world: a synthetic two-feature corpus and the small model trained on it.

`mlux/models/mlux-toy` (fp32) and `mlux/models/mlux-toy-4bit` were trained on this corpus by
`experiments/toy_model/train.py` (`mlux.builtin.builtin_model_path("mlux-toy")`); `classify`
scores the behaviour of their generations.
"""

from __future__ import annotations

from . import corpus
from .corpus import *  # noqa: F403 - the corpus API is this package's API

__all__ = list(corpus.__all__)
