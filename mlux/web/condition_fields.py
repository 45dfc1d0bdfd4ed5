"""The request fields of a condition (conditional steering), read the same way by `mlux serve`
and the explorer; each app reads the condition's vector in its own way (a library name or
inline numbers; a computed or library vector)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..conditions import COMPARATORS, SUMMARIES, Condition
from .fields import Fields, RequestError

__all__ = ["ConditionSettings", "condition_object", "read_condition_settings"]


@dataclass(frozen=True)
class ConditionSettings:
    layer: int
    threshold: float
    comparator: str
    summary: str

    def condition(self, vector: Any, field: str) -> Condition:
        """The condition on `vector`; its own checks (e.g. a vector without a direction at the
        layer) fail as a 400 naming `field`, where the vector was given."""
        try:
            return Condition(vector, self.layer, self.threshold, self.comparator, self.summary)
        except ValueError as e:
            raise RequestError(f"{field} {e}", field) from None


def read_condition_settings(c: Fields, num_layers: int) -> ConditionSettings:
    """`layer` (required), `threshold` (a cosine similarity, required), `comparator` ("larger"
    by default) and `summary` ("mean" by default) of a condition object."""
    layer = c.integer("layer", 0, num_layers - 1)
    if layer is None:
        raise c.fail("layer", f"is required (an integer in 0..{num_layers - 1})")
    return ConditionSettings(layer, c.number("threshold", -1.0, 1.0),
                             c.choice("comparator", COMPARATORS, "larger"),
                             c.choice("summary", SUMMARIES, "mean"))


def condition_object(f: Fields, key: str = "condition") -> Fields | None:
    """The condition object's fields (None when absent)."""
    raw = f.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise f.fail(key, "must be an object {vector, layer, threshold, comparator}")
    return Fields(raw, f"{f.prefix}{key}.")

