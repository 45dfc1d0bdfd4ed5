"""What a search trial chooses, and what those choices mean for the model.

A trial's parameters (all plain floats / strings, as optuna stores them):
- `layer` (float): the direction is the unit vector interpolated between the two neighbouring
  layers' vectors (heretic's fractional direction index); it is applied around `round(layer)`.
- `strength` (steer only): the push at each layer as a fraction of that layer's mean residual
  norm, so layers with very different norms are compared at the same relative push.
- `window`: "all" | "prompt" | "generated" (`mlux.positions`).
- `distance`, `min_weight` (with `kernel`): heretic's per-layer profile, weight 1 at the centre
  layer falling linearly to `min_weight` at `distance` layers, 0 beyond (distance 0 = one layer).
- ablate: `max_weight` scales the whole profile (1 = the direction fully projected out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Optional

import mlx.core as mx

__all__ = ["MODES", "WINDOWS", "SearchSpace", "interpolated_direction", "layer_weights",
           "suggest"]

MODES = ("steer", "ablate")
WINDOWS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges the sampler draws from. `layers` is the (low, high) span of the centre layer
    (None: the whole model but its last fifth, which Arditi et al. skip); `kernel` adds the
    per-layer profile's `distance` and `min_weight` to steering (ablation always has them)."""

    layers: tuple[float, float] | None = None
    strengths: tuple[float, float] = (0.0, 1.0)
    windows: tuple[str, ...] = WINDOWS
    kernel: bool = False
    max_distance: float | None = None  # None: the whole model
    weights: tuple[float, float] = field(default=(0.0, 1.0))  # ablate: max_weight's range

    def resolved(self, num_layers: int) -> SearchSpace:
        """This space with the default layer span filled in and every range checked."""
        low, high = self.layers if self.layers is not None else (
            0.0, float(max(0, math.ceil(0.8 * num_layers) - 1)))
        if not 0 <= low <= high <= num_layers - 1:
            raise ValueError(f"layer range {low:g}-{high:g} is outside the model's layers "
                             f"0-{num_layers - 1}")
        if not all(math.isfinite(s) for s in self.strengths) or \
                self.strengths[0] > self.strengths[1]:
            raise ValueError(f"strength range must be two finite numbers low <= high, got "
                             f"{self.strengths}")
        bad = [w for w in self.windows if w not in WINDOWS]
        if bad or not self.windows:
            raise ValueError(f"unknown window {bad or '(none)'}; choose from {', '.join(WINDOWS)}")
        if not 0 <= self.weights[0] <= self.weights[1] <= 1:
            raise ValueError(f"ablation weights must lie in 0..1, got {self.weights}")
        reach = float(num_layers - 1 if self.max_distance is None else self.max_distance)
        if not reach >= 0:
            raise ValueError(f"max distance must be >= 0, got {reach}")
        return SearchSpace((float(low), float(high)), tuple(self.strengths),
                           tuple(self.windows), self.kernel, reach,
                           tuple(self.weights))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers or ()), "strengths": list(self.strengths),
                "windows": list(self.windows), "kernel": self.kernel,
                "max_distance": self.max_distance, "weights": list(self.weights)}


def _float(trial: Any, name: str, span: tuple[float, float]) -> float:
    """A fixed value when the range is one point (optuna refuses an empty range to sample)."""
    low, high = span
    return float(low) if low == high else trial.suggest_float(name, low, high)


def suggest(trial: Any, space: SearchSpace, mode: str) -> dict[str, Any]:
    """Draw one trial's parameters from an optuna trial (space already `resolved`)."""
    params: dict[str, Any] = {"layer": _float(trial, "layer", space.layers)}
    if mode == "steer":
        params["strength"] = _float(trial, "strength", space.strengths)
    else:
        params["max_weight"] = _float(trial, "max_weight", space.weights)
    params["window"] = (space.windows[0] if len(space.windows) == 1 else
                        trial.suggest_categorical("window", list(space.windows)))
    if space.kernel or mode == "ablate":  # an ablation is a profile over layers (heretic)
        params["distance"] = _float(trial, "distance", (0.0, space.max_distance))
        params["min_weight"] = _float(trial, "min_weight", (0.0, 1.0))
    return params


def layer_weights(params: Mapping[str, Any], num_layers: int,
                  layers: Optional[Collection[int]] = None) -> dict[int, float]:
    """Per-layer weight of a trial: 1 at `round(layer)`, linear fall-off to `min_weight` at
    `distance`, nothing beyond; times `max_weight` (ablate). Layers of weight 0, and layers
    outside `layers` when given (steering needs the vector's own layers), are left out."""
    centre = int(round(float(params["layer"])))
    distance = float(params.get("distance", 0.0))
    floor = float(params.get("min_weight", 1.0))
    scale = float(params.get("max_weight", 1.0))
    out = {}
    for i in range(num_layers):
        d = abs(i - centre)
        if d > distance or (layers is not None and i not in layers):
            continue
        w = scale * (1.0 - (1.0 - floor) * (d / distance if distance > 0 else 0.0))
        if w > 0:
            out[i] = w
    return out


def interpolated_direction(directions: Mapping[int, mx.array], layer: float) -> mx.array:
    """The unit `(D,)` direction at a fractional layer: the two neighbouring layers' unit
    vectors mixed linearly, renormalised (a whole layer: that layer's own unit vector)."""
    low, high = math.floor(layer), math.ceil(layer)
    missing = [i for i in (low, high) if i not in directions]
    if missing:
        raise ValueError(f"no vector at layers {missing}; the vector has {sorted(directions)}")

    def unit(i: int) -> mx.array:
        v = directions[i].astype(mx.float32)
        norm = mx.linalg.norm(v)
        if float(norm.item()) == 0.0:
            raise ValueError(f"the vector is zero at layer {i}")
        return v / norm

    t = layer - low
    mixed = unit(low) if t == 0 else (1 - t) * unit(low) + t * unit(high)
    return mixed / mx.linalg.norm(mixed)
