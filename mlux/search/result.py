"""A finished search: every trial, the Pareto front of behaviour against damage, the pick, and
the chosen trial as a vector file that `mlux generate`, `mlux serve`, GGUF export and
`mlux bake` read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import mlx.core as mx

from ..vectors import SteeringVector
from .objectives import steering_of
from .space import interpolated_direction, layer_weights

__all__ = ["SearchResult", "Trial", "pareto_front"]


@dataclass(frozen=True)
class Trial:
    """One evaluated trial: `params` (see `mlux.search.space`), `behavior` in 0..1 and `kl`
    (mean first-token KL on the harmless prompts); `extras` hold the rest (perplexity, labelled
    samples, log-odds, example texts)."""

    number: int
    params: dict[str, Any]
    behavior: float
    kl: float
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _goals(t: Trial, maximize: bool) -> tuple[float, ...]:
    """A trial's objectives, each to be minimised: behaviour (negated when raised), KL, and the
    false-positive rate when the search had avoid prompts."""
    fp = t.extras.get("false_positive")
    return (-t.behavior if maximize else t.behavior, t.kl, *(() if fp is None else (fp,)))


def pareto_front(trials: list[Trial], maximize: bool) -> list[Trial]:
    """Trials no other trial beats on every objective (behaviour higher if `maximize`, else
    lower; KL lower; false positives lower), by increasing KL; of identical points the first
    trial stands for all."""
    front: list[Trial] = []
    for t in sorted(trials, key=lambda t: (t.kl, _goals(t, maximize), t.number)):
        g = _goals(t, maximize)
        if not any(all(a <= b for a, b in zip(_goals(f, maximize), g, strict=True))
                   for f in front):
            front.append(t)
    return front


@dataclass
class SearchResult:
    """`trials` in trial order; `front` by increasing KL; `best(max_kl)` the front trial with
    the best behaviour at KL <= max_kl (None: the best behaviour overall); `to_vector()` writes
    a trial as a `SteeringVector`."""

    mode: str
    trials: list[Trial]
    settings: dict[str, Any]
    directions: dict[int, mx.array]
    residual: dict[int, float]
    num_layers: int
    model_id: Optional[str] = None

    @property
    def maximize(self) -> bool:
        return self.mode == "steer"  # steer raises the behaviour, ablate removes it

    @property
    def front(self) -> list[Trial]:
        return pareto_front(self.trials, self.maximize)

    def best(self, max_kl: Optional[float] = None) -> Trial:
        allowed = [t for t in self.front if max_kl is None or t.kl <= max_kl]
        if not allowed:
            raise ValueError(f"no trial has KL <= {max_kl:g}; the lowest is "
                             f"{min(t.kl for t in self.trials):.4g}")
        return max(allowed, key=lambda t: t.behavior) if self.maximize else \
            min(allowed, key=lambda t: t.behavior)

    def trial(self, number: int) -> Trial:
        found = [t for t in self.trials if t.number == number]
        if not found:
            numbers = [t.number for t in self.trials]
            raise ValueError(f"no trial {number}; the trials are numbered {min(numbers)}.."
                             f"{max(numbers)}" if numbers else "there are no trials")
        return found[0]

    def to_vector(self, trial: Optional[Trial] = None) -> SteeringVector:
        """The trial (default: `best()`) as a vector. Steer: each weighted layer's final delta
        (apply at alpha 1); ablate: the unit direction at the centre layer, the per-layer
        weights in the metadata. Metadata `search` holds params, weights, window, scores."""
        t = trial or self.best()
        if self.mode == "steer":  # the very deltas the search steered with
            directions = dict(steering_of(t.params, self.directions, self.residual,
                                          self.num_layers).vector)
            weights = layer_weights(t.params, self.num_layers, self.residual)
        else:
            directions = {int(round(float(t.params["layer"]))):
                          interpolated_direction(self.directions, float(t.params["layer"]))}
            weights = layer_weights(t.params, self.num_layers)
        meta = {"search": {"mode": self.mode, "trial": t.number, "params": t.params,
                           "window": t.params["window"],
                           "layer_weights": {str(i): w for i, w in weights.items()},
                           "behavior": t.behavior, "kl": t.kl,
                           "behavior_name": self.settings.get("behavior")},
                "positions": t.params["window"]}
        return SteeringVector(directions, model_id=self.model_id, method=f"search-{self.mode}",
                              metadata=meta)

    def to_dict(self) -> dict[str, Any]:
        front = {t.number for t in self.front}
        return {"mode": self.mode, "settings": self.settings,
                "trials": [{**t.to_dict(), "on_front": t.number in front} for t in self.trials],
                "front": [t.number for t in self.front]}
