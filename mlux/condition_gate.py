"""The decoder's side of conditional steering: every row decides its conditional terms once,
from its own prefill, and holds the decision for its whole generation.

During the prefill a hook at each condition layer sums the row's residuals over its real prompt
tokens (left padding masked); in the forward that holds the prompt's last token it decides
(`Condition.decide`, rules combined), so the layers deeper than the condition already steer
that token, which predicts the first generated one. No extra forward runs. After the prefill a
fired term becomes a plain term and an unfired one is dropped, so decoding steps pay nothing.
A conditional term never steers the positions before the prompt's last token (they ran before
the decision), so rows of one prompt may share one prefill of `prompt[:-1]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import mlx.core as mx

from .conditions import Condition, Decision, Rule, cosine, prompt_summaries
from .hooks import Hook, HookContext
from .model import HookedModel
from .positions import resolve_positions
from .steering import RowSteering, Steering, row_steering_hooks, row_terms

__all__ = ["PrefillGate", "is_conditional", "plain_rows"]


def is_conditional(term: Steering) -> bool:
    return getattr(term, "condition", None) is not None


def plain_rows(rows: Sequence[RowSteering]) -> list[RowSteering]:
    """Each row's unconditional terms (None when it has none)."""
    return [[t for t in row_terms(r) if not is_conditional(t)] or None for r in rows]


@dataclass(frozen=True)
class _Slot:
    """One conditional term of one row of the lane."""

    row: int
    term: Steering
    rule: Rule
    leaves: tuple[Condition, ...]


class PrefillGate:
    """Hooks for one prefill of `len(rows)` rows (left-padded) whose longest row ends before
    position `end`: recorders at the condition layers and, for the forward of the last prompt
    token, the fired terms' steering at the layers deeper than their conditions. `prefix`
    carries sums already taken over a shared `prompt[:-1]`."""

    def __init__(self, hooked: HookedModel, rows: Sequence[RowSteering],
                 prompt_lengths: Sequence[int], end: float,
                 prefix: Optional[dict[int, mx.array]] = None) -> None:
        self.slots: list[_Slot] = []
        for r, row in enumerate(rows):
            for term in row_terms(row):
                if is_conditional(term):
                    rule = term.condition
                    if not hasattr(rule, "leaves"):
                        raise ValueError(f"Steering(condition=...) takes a Condition or a rule "
                                         f"(any_of, all_of, not_), got {type(rule).__name__}")
                    rule.check(hooked.hidden_size, hooked.num_layers)
                    remote = [c.layer for c in rule.leaves() if c.layer not in hooked.local_layers]
                    if remote:  # every rank must reach the same decision
                        raise ValueError(f"condition layers {remote} run on another rank of "
                                         "this pipeline-sharded model; conditions need layers "
                                         "every rank runs")
                    # the behaviour itself is checked as the plain term it becomes if fired
                    row_steering_hooks(hooked, [dataclasses.replace(term, condition=None)],
                                       [prompt_lengths[r]])
                    self.slots.append(_Slot(r, term, rule, rule.leaves()))
        self.hooked = hooked
        self.lengths = [int(n) for n in prompt_lengths]
        self.end = end
        b, d = len(rows), hooked.hidden_size
        layers = sorted({c.layer for s in self.slots for c in s.leaves})
        self.sums = {i: (mx.zeros((b, d)) if prefix is None else mx.repeat(prefix[i], b, axis=0))
                     for i in layers}  # (b, D) each
        self.scores: dict[int, mx.array] = {}  # id(condition) -> (b,) cosine
        self.verdicts: dict[int, mx.array] = {}  # id(condition) -> (b,) bool
        self.gates: dict[int, mx.array] = {}  # slot -> (b,) bool, once decided

    @classmethod
    def for_rows(cls, hooked: HookedModel, rows: Sequence[RowSteering],
                 prompt_lengths: Sequence[int], end: float,
                 prefix: Optional[dict[int, mx.array]] = None) -> Optional[PrefillGate]:
        """A gate, or None when no row has a conditional term."""
        gate = cls(hooked, rows, prompt_lengths, end, prefix)
        return gate if gate.slots else None

    def hooks(self) -> list[tuple[str, Hook]]:
        pairs = [(f"residuals_{i}", self._record(i)) for i in self.sums]
        for k, slot in enumerate(self.slots):
            depth = max(c.layer for c in slot.leaves)
            start, end = resolve_positions(slot.term.positions, self.lengths[slot.row])
            if not start <= self.lengths[slot.row] - 1 < end:
                continue  # its window leaves out the last prompt token
            select = mx.array([float(r == slot.row) for r in range(len(self.lengths))])
            for layer, vec in slot.term.per_layer().items():
                if layer > depth:
                    pairs.append((f"residuals_{layer}", self._steer(k, vec * slot.term.alpha,
                                                                    select)))
        return pairs

    def _record(self, layer: int) -> Hook:
        def hook(x: mx.array, ctx: HookContext) -> None:
            xs = x.astype(mx.float32)
            real = (ctx.positions() >= 0)[..., None]  # (1|B, T, 1): left padding is negative
            self.sums[layer] = self.sums[layer] + mx.where(real, xs, 0).sum(axis=1)
            if ctx.offset + ctx.length < self.end:
                mx.async_eval(self.sums[layer])  # drop this chunk's activations
                return None
            self._decide(layer, xs[:, -1])  # the forward of every row's last prompt token
            return None

        return hook

    def _decide(self, layer: int, last: mx.array) -> None:
        counts = mx.array(self.lengths, dtype=mx.float32)
        for k, slot in enumerate(self.slots):
            for c in slot.leaves:
                if c.layer == layer and id(c) not in self.scores:
                    state = prompt_summaries(self.sums[layer], counts, last, c.summary)
                    self.scores[id(c)] = cosine(state, c.direction)
                    self.verdicts[id(c)] = c.decide(self.scores[id(c)])
            if k not in self.gates and all(id(c) in self.verdicts for c in slot.leaves):
                self.gates[k] = slot.rule.evaluate(lambda c: self.verdicts[id(c)])

    def _steer(self, k: int, delta: mx.array, select: mx.array) -> Hook:
        def hook(x: mx.array, ctx: HookContext) -> Optional[mx.array]:
            gate = self.gates.get(k)
            if gate is None:  # not the decision forward (or not decided yet)
                return None
            weight = select * gate.astype(mx.float32)  # (B,): 1 on this row if it fired
            return x + (weight[:, None, None] * delta).astype(x.dtype)

        return hook

    def resolve(self, rows: Sequence[RowSteering]) -> list[tuple[RowSteering, list[Decision]]]:
        """After the prefill: each row's steering with its conditions decided (fired terms kept
        unconditional, the others dropped) and one `Decision` per term."""
        missing = [k for k in range(len(self.slots)) if k not in self.gates]
        if missing:
            raise RuntimeError(f"condition layers of {self.hooked.model_type} did not run in "
                               "the prefill")
        mx.eval(self.gates, self.scores)
        gates = {k: g.tolist() for k, g in self.gates.items()}
        scores = {key: s.tolist() for key, s in self.scores.items()}
        out = []
        k = 0
        for r, row in enumerate(rows):
            terms: list[Steering] = []
            decisions = []
            for term in row_terms(row):
                if not is_conditional(term):
                    terms.append(term)
                    decisions.append(Decision(True))
                    continue
                slot = self.slots[k]
                fired = bool(gates[k][r])
                decisions.append(Decision(fired, tuple(scores[id(c)][r] for c in slot.leaves)))
                if fired:
                    terms.append(dataclasses.replace(term, condition=None))
                k += 1
            out.append((terms or None, decisions))
        return out
