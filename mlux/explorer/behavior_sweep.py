"""A behaviour-based layer sweep for the explorer: per layer, the rate of a behaviour over
sampled continuations of test prompts, steered vs not (the experiments' `behavior_rates`)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..behavior import BehaviorCell, behavior_rates
from ..evaluation import wilson_interval
from ..model import HookedModel
from ..vectors import SteeringVector

__all__ = ["behavior_sweep", "toy_behavior_sweeps", "toy_scorers"]


def _finite(x: float) -> Optional[float]:
    return x if x == x else None


def _interval(cell: BehaviorCell) -> list[Optional[float]]:
    """The rate's 95% Wilson interval over the samples the scorer could label."""
    hits = round(cell.rate * cell.labelled) if cell.labelled else 0
    return [_finite(x) for x in wilson_interval(hits, cell.labelled)]


def behavior_sweep(scorer: Callable[[str], Optional[bool]], prompts: Sequence[str],
                    label: str, samples: int = 2) -> Callable[..., dict[str, Any]]:
    """A sweep mode: `scorer` decides the behaviour, `prompts` are steered at every layer."""

    def sweep(hooked: HookedModel, vector: SteeringVector, tokens: list[int], *,
              layers: Sequence[int], alpha: float, max_tokens: int) -> dict[str, Any]:
        del tokens  # the behaviour is measured on the fixed test prompts, not the page's one
        cells = behavior_rates(hooked, vector, prompts, scorer, alphas=[0.0, alpha],
                               layers=list(layers), samples_per_prompt=samples,
                               max_tokens=max_tokens, positions="all")
        base = cells[0]
        rows = [{"layer": c.layer, "norm": vector.norms[c.layer], "baseline": _finite(base.rate),
                 "steered": _finite(c.rate), "delta": _finite(c.rate - base.rate),
                 "baseline_ci": _interval(base), "steered_ci": _interval(c), "n": c.labelled,
                 "text": c.texts[0] if c.texts else ""}
                for c in cells if c.alpha == alpha]
        return {"mode": label, "quantity": "rate", "alpha": alpha, "layers": rows,
                "y_label": f"rate of {label} (%)",
                "baseline_text": base.texts[0] if base.texts else "",
                "metric": f"rate of {label} over {len(prompts)} test prompts x {samples} "
                          "sampled continuations (temperature 1), every position steered; "
                          "bars: 95% Wilson intervals"}

    return sweep


def toy_scorers() -> dict[str, Callable[[str], Optional[bool]]]:
    """One scorer per feature of the built-in model, named by the value it detects."""
    from ..toy import FEATURES, feature_scorer

    return {values[0]: feature_scorer(feature, values[0]) for feature, values in FEATURES.items()}


def toy_behavior_sweeps() -> dict[str, Callable[..., dict[str, Any]]]:
    """One mode per feature value the built-in model was trained on."""
    from ..toy import TEST_PROMPTS

    return {f"behavior:{label}": behavior_sweep(scorer, TEST_PROMPTS, label)
            for label, scorer in toy_scorers().items()}
