"""Conditional steering (CAST): a behaviour term that applies only when the prompt is about
something.

A `Condition` is a direction at one layer, a threshold and a comparator: the prompt's hidden
state there (the mean over its tokens, or its last token) is compared by cosine similarity with
the direction; "larger" fires when the similarity is above the threshold, "smaller" when below.
Rules (`any_of`, `all_of`, `not_`) combine conditions. `Steering(..., condition=...)` gates a
term; the decoder decides once per row from its prefill (`mlux.condition_gate`), and
`fires(hooked, prompts)` decides the same from a capture, for search and inspection.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

import mlx.core as mx

from .atomic import PathLike
from .inputs import Inputs
from .model import HookedModel
from .steering import as_f32
from .vectors import SteeringVector

__all__ = ["COMPARATORS", "SUMMARIES", "AllOf", "AnyOf", "Condition", "Decision", "Not", "Rule",
           "all_of", "any_of", "cosine", "not_", "prompt_summaries"]

COMPARATORS = ("larger", "smaller")
SUMMARIES = ("mean", "last")


def cosine(states: mx.array, unit: mx.array) -> mx.array:
    """Cosine similarity of each row of `states` `(B, D)` with the unit direction `(D,)`: `(B,)`."""
    norms = mx.linalg.norm(states, axis=-1)
    return (states @ unit) / mx.maximum(norms, 1e-12)


def prompt_summaries(sums: mx.array, counts: mx.array, last: mx.array, how: str) -> mx.array:
    """A prompt's state at one layer `(B, D)`: the mean of its tokens' residuals (from their sum
    and count) or its last token's."""
    return sums / counts[:, None] if how == "mean" else last


def _unit_direction(vector: Any, layer: int) -> mx.array:
    directions = getattr(vector, "directions", None)
    if isinstance(directions, Mapping):
        if layer not in directions:
            raise ValueError(f"the condition vector has layers {sorted(directions)}, not the "
                             f"condition's layer {layer} (pass vector[layer] to use a direction "
                             "elsewhere)")
        vector = directions[layer]
    arr = as_f32(vector, "condition vector")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"a condition vector is one (D,) direction, got shape {arr.shape}")
    norm = float(mx.linalg.norm(arr).item())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("the condition vector must be finite and non-zero")
    unit = arr / norm
    mx.eval(unit)  # evaluated here: a lazy graph can't be evaluated from another thread (serve)
    return unit


class _RuleOps:
    """What every rule can do: list its conditions and decide prompts from a capture."""

    def leaves(self) -> tuple[Condition, ...]:
        raise NotImplementedError

    def evaluate(self, fired: Callable[[Condition], mx.array]) -> mx.array:
        """Combine the conditions' per-row verdicts `(B,)` (bool) into this rule's."""
        raise NotImplementedError

    def check(self, hidden_size: int, num_layers: int) -> None:
        for c in self.leaves():
            c.check(hidden_size, num_layers)

    def scores(self, hooked: HookedModel, prompts: Inputs) -> list[list[float]]:
        """Each prompt's cosine with each condition (in `leaves()` order), from one capture."""
        leaves = self.leaves()
        self.check(hooked.hidden_size, hooked.num_layers)
        batch = hooked.tokenize(prompts)
        layers = sorted({c.layer for c in leaves})
        acts = hooked.capture(prompts, [f"residuals_{i}" for i in layers])
        lengths = mx.array(batch.lengths, dtype=mx.float32)  # (B,)
        width = batch.tokens.shape[1]
        real = (mx.arange(width)[None] >= (width - lengths)[:, None])[..., None]  # (B, T, 1)
        out = []
        for c in leaves:
            x = acts[f"residuals_{c.layer}"].astype(mx.float32)  # (B, T, D), left-padded
            sums = mx.where(real, x, 0).sum(axis=1)
            out.append(cosine(prompt_summaries(sums, lengths, x[:, -1], c.summary), c.direction))
        table = mx.stack(out, axis=1)  # (B, leaves)
        return table.tolist()

    def fires(self, hooked: HookedModel, prompts: Inputs) -> list[bool]:
        """Does the rule fire on each prompt? (What the decoder decides from its prefill.)"""
        leaves = self.leaves()
        table = mx.array(self.scores(hooked, prompts))  # (B, leaves)
        verdicts = {id(c): c.decide(table[:, i]) for i, c in enumerate(leaves)}
        return [bool(v) for v in self.evaluate(lambda c: verdicts[id(c)]).tolist()]


@dataclass(frozen=True, eq=False)
class Condition(_RuleOps):
    """Fires when the prompt's state at `residuals_{layer}` has cosine similarity with `vector`
    above (`comparator="larger"`) or below ("smaller") `threshold`; `summary` "mean" averages
    the prompt's tokens, "last" takes its last token. `vector` is a `(D,)` array or a
    `SteeringVector` (its direction at `layer`)."""

    vector: Any
    layer: int
    threshold: float
    comparator: str = "larger"
    summary: str = "mean"
    direction: mx.array = field(init=False, repr=False)  # (D,), unit norm

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral) \
                or self.layer < 0:
            raise ValueError(f"condition layer must be an int >= 0, got {self.layer!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, numbers.Real) \
                or not math.isfinite(self.threshold):
            raise ValueError(f"condition threshold must be a finite number, got "
                             f"{self.threshold!r}")
        if self.comparator not in COMPARATORS:
            raise ValueError(f"unknown comparator {self.comparator!r}; valid: "
                             f"{', '.join(COMPARATORS)}")
        if self.summary not in SUMMARIES:
            raise ValueError(f"unknown summary {self.summary!r}; valid: {', '.join(SUMMARIES)}")
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "direction", _unit_direction(self.vector, self.layer))

    @property
    def hidden_size(self) -> int:
        return int(self.direction.shape[0])

    def leaves(self) -> tuple[Condition, ...]:
        return (self,)

    def evaluate(self, fired: Callable[[Condition], mx.array]) -> mx.array:
        return fired(self)

    def check(self, hidden_size: int, num_layers: int) -> None:
        """Raise `ValueError` unless this condition fits a model of that width and depth."""
        if self.hidden_size != hidden_size:
            raise ValueError(f"condition vector has hidden size {self.hidden_size}; the model's "
                             f"is {hidden_size}")
        if self.layer >= num_layers:
            raise ValueError(f"condition layer {self.layer} is out of range for a model with "
                             f"{num_layers} layers (valid: 0..{num_layers - 1})")

    def decide(self, score: mx.array) -> mx.array:
        """Per-row verdicts `(B,)` from cosine similarities `(B,)`."""
        return score > self.threshold if self.comparator == "larger" else score < self.threshold

    def flipped(self) -> Condition:
        """The complement at the same threshold (comparator swapped)."""
        other = "smaller" if self.comparator == "larger" else "larger"
        return Condition(self.vector, self.layer, self.threshold, other, self.summary)

    # -- files: a one-layer SteeringVector whose metadata carries the rest ----------------------
    def to_vector(self) -> Any:
        base = self.vector if isinstance(self.vector, SteeringVector) else None
        meta = dict(base.metadata) if base is not None else {}
        meta["condition"] = {"layer": self.layer, "threshold": self.threshold,
                             "comparator": self.comparator, "summary": self.summary}
        if base is None:
            return SteeringVector({self.layer: self.direction}, method="condition", metadata=meta)
        direction = base.directions.get(self.layer, self.direction)
        return SteeringVector({self.layer: direction}, model_id=base.model_id,
                              method=base.method, num_pairs=base.num_pairs, metadata=meta)

    def save(self, path: PathLike) -> Any:
        """Write the condition as a steering-vector file (safetensors, atomically)."""
        return self.to_vector().save(path)

    @classmethod
    def from_vector(cls, vector: Any) -> Condition:
        """A condition from a vector whose metadata carries one (`to_vector`, `load`)."""
        spec = vector.metadata.get("condition")
        if not isinstance(spec, dict):
            raise ValueError("this vector file carries no condition (no layer/threshold/"
                             "comparator metadata); save one with Condition.save or mlux "
                             "condition-search --save-condition")
        try:
            return cls(vector, spec["layer"], spec["threshold"], spec.get("comparator", "larger"),
                       spec.get("summary", "mean"))
        except KeyError as e:
            raise ValueError(f"the condition metadata lacks {e}") from None

    @classmethod
    def load(cls, path: PathLike, *, hidden_size: Union[int, None] = None) -> Condition:
        return cls.from_vector(SteeringVector.load(path, hidden_size=hidden_size))


@dataclass(frozen=True, eq=False)
class AnyOf(_RuleOps):
    parts: tuple[Rule, ...]
    join: ClassVar[Callable[[mx.array, mx.array], mx.array]] = staticmethod(mx.logical_or)

    def leaves(self) -> tuple[Condition, ...]:
        return tuple(c for p in self.parts for c in p.leaves())

    def evaluate(self, fired: Callable[[Condition], mx.array]) -> mx.array:
        return functools.reduce(type(self).join, (p.evaluate(fired) for p in self.parts))


@dataclass(frozen=True, eq=False)
class AllOf(AnyOf):
    join: ClassVar[Callable[[mx.array, mx.array], mx.array]] = staticmethod(mx.logical_and)


@dataclass(frozen=True, eq=False)
class Not(_RuleOps):
    part: Rule

    def leaves(self) -> tuple[Condition, ...]:
        return self.part.leaves()

    def evaluate(self, fired: Callable[[Condition], mx.array]) -> mx.array:
        return mx.logical_not(self.part.evaluate(fired))


Rule = Union[Condition, AnyOf, AllOf, Not]


def _rules(parts: Sequence[Any], what: str) -> tuple[Rule, ...]:
    if not parts:
        raise ValueError(f"{what}() needs at least one condition")
    bad = [p for p in parts if not isinstance(p, _RuleOps)]
    if bad:
        raise ValueError(f"{what}() takes Conditions or rules, got {type(bad[0]).__name__}")
    return tuple(parts)


def any_of(*parts: Rule) -> AnyOf:
    """Fires when any part fires ("if about legal or medical")."""
    return AnyOf(_rules(parts, "any_of"))


def all_of(*parts: Rule) -> AllOf:
    """Fires when every part fires."""
    return AllOf(_rules(parts, "all_of"))


def not_(part: Rule) -> Not:
    """Fires when `part` does not (the complement: "only answer questions about X")."""
    return Not(_rules((part,), "not_")[0])


@dataclass(frozen=True)
class Decision:
    """How a row's steering term was decided: whether it applies, and each condition's cosine
    similarity (in the rule's `leaves()` order; empty for an unconditional term)."""

    fired: bool
    scores: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "scores": list(self.scores)}
