"""Where does a condition separate two prompt sets? CAST's `find_best_condition_point`: F1 of
the gate over a grid of layer x threshold x comparator, the best cell as a `Condition`.

Every prompt's cosine similarity at every layer comes from one capture (`Condition.scores` of
a rule over all layers), so the grid itself costs no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .atomic import PathLike, atomic_write_json
from .behavior import prompt_ids
from .conditions import COMPARATORS, SUMMARIES, Condition, any_of
from .extract import extract_steering_vectors
from .model import HookedModel

__all__ = ["ConditionSearch", "f1_score", "find_condition_point", "threshold_grid"]


def f1_score(predicted: Sequence[bool], actual: Sequence[bool]) -> float:
    """F1 of `predicted` against `actual` (True = the positive class); 0 when nothing is
    predicted or nothing is positive."""
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def threshold_grid(scores: np.ndarray, count: int = 41) -> list[float]:
    """`count` evenly spaced thresholds over the observed cosine similarities."""
    lo, hi = float(scores.min()), float(scores.max())
    return [round(float(t), 6) for t in np.linspace(lo, hi, count)]


@dataclass
class ConditionSearch:
    """F1 per cell (`f1[comparator][i][j]` for `layers[i]`, `thresholds[j]`) and the best cell
    (`best`, a `Condition`; ties go to the threshold farthest from every prompt's score)."""

    layers: list[int]
    thresholds: list[float]
    comparators: list[str]
    summary: str
    f1: dict[str, list[list[float]]]
    best: Condition
    best_f1: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        b = self.best
        return {"layers": self.layers, "thresholds": self.thresholds,
                "comparators": self.comparators, "summary": self.summary, "f1": self.f1,
                "best": {"layer": b.layer, "threshold": b.threshold, "comparator": b.comparator,
                         "summary": b.summary, "f1": self.best_f1},
                "counts": self.counts}

    def save(self, path: PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())


def find_condition_point(
    hooked: HookedModel,
    positive: Sequence[Any],
    negative: Sequence[Any],
    layers: Optional[Sequence[int]] = None,
    thresholds: Optional[Sequence[float]] = None,
    comparators: Sequence[str] = COMPARATORS,
    *,
    vector: Any = None,
    summary: str = "mean",
    method: str = "mean_diff",
    chat: bool = False,
) -> ConditionSearch:
    """F1 of "the condition fires" against "the prompt is in `positive`" for every cell of
    layers (default: all) x thresholds (default: 41 over the observed similarities) x
    comparators. The condition vector is `vector` (a `SteeringVector` with those layers) or,
    by default, extracted from `positive` / `negative` (`method`, `chat` as in extraction)."""
    if not positive or not negative:
        raise ValueError("a condition search needs positive and negative prompts")
    if summary not in SUMMARIES:
        raise ValueError(f"unknown summary {summary!r}; valid: {', '.join(SUMMARIES)}")
    bad = [c for c in comparators if c not in COMPARATORS]
    if bad or not comparators:
        raise ValueError(f"unknown comparator {bad[0] if bad else None!r}; valid: "
                         f"{', '.join(COMPARATORS)}")
    layers = list(range(hooked.num_layers)) if layers is None else [int(i) for i in layers]
    if vector is None:
        vector = extract_steering_vectors(hooked, list(positive), list(negative), layers,
                                          method=method, chat=chat)
    probes = [Condition(vector, i, 0.0, summary=summary) for i in layers]
    # scored as extracted: with `chat`, each prompt in the chat template (the one chat route)
    prompts = [prompt_ids(hooked, p, chat) for p in list(positive) + list(negative)]
    scores = np.array(any_of(*probes).scores(hooked, prompts))  # (N, layers)
    actual = [True] * len(positive) + [False] * len(negative)
    grid = threshold_grid(scores) if thresholds is None else [float(t) for t in thresholds]
    if not grid or not all(np.isfinite(grid)):
        raise ValueError("thresholds must be a non-empty list of finite numbers")
    f1: dict[str, list[list[float]]] = {}
    best: tuple[float, float, int, float, str] = (-1.0, -1.0, 0, 0.0, comparators[0])
    for comp in comparators:
        f1[comp] = []
        for li, layer in enumerate(layers):
            row = []
            for t in grid:
                fired = scores[:, li] > t if comp == "larger" else scores[:, li] < t
                value = f1_score(fired.tolist(), actual)
                margin = float(np.abs(scores[:, li] - t).min())
                row.append(round(value, 6))
                if (value, margin) > best[:2]:
                    best = (value, margin, layer, t, comp)
            f1[comp].append(row)
    value, _, layer, t, comp = best
    return ConditionSearch(layers, grid, list(comparators), summary, f1,
                           Condition(vector, layer, t, comp, summary), value,
                           {"positive": len(positive), "negative": len(negative)})
