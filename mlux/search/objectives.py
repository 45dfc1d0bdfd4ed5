"""Scoring search trials: behaviour (sampled rate through the one decoder, or the
generation-free log-odds) and damage (first-token KL on harmless prompts; perplexity of the
steered text under the unsteered model).

Steer trials run as rows of one batch: every (trial, prompt, sample) is a decoder row with its
own `Steering`, and every (trial, harmless prompt) a row of one KL forward. Ablate trials each
install their hooks on every residual writer (`attention_i`, `mlp_i`), prompts as rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import _score as score_text  # the sweeps' scorer call, one clear error
from ..evaluation import first_token_kl, first_token_logits
from ..experiments.common import steered_perplexity
from ..generate import generate_batch
from ..hooks import Hook
from ..model import HookedModel
from ..steering import Steering, weighted_ablation_hooks
from .space import interpolated_direction, layer_weights
from .tokens import token_logodds

__all__ = ["Measurement", "TrialScorer", "ablation_hooks", "steering_of"]

Params = dict[str, Any]


@dataclass
class Measurement:
    behavior: float  # share of samples labelled as the behaviour (or sigmoid of log-odds)
    kl: float  # mean first-token KL(unsteered || steered) on the harmless prompts
    extras: dict[str, Any] = field(default_factory=dict)


def steering_of(params: Params, directions: dict[int, mx.array],
                residual: dict[int, float], num_layers: int) -> Steering:
    """A steer trial as one row's `Steering`: at each weighted layer l, the unit direction
    times weight * strength * the layer's residual norm (alpha 1: the deltas are final)."""
    u = interpolated_direction(directions, float(params["layer"]))
    s = float(params["strength"])
    weights = layer_weights(params, num_layers, residual)
    deltas = {i: u * (w * s * residual[i]) for i, w in weights.items()}
    return Steering(deltas, 1.0, positions=params["window"])


def ablation_hooks(params: Params, directions: dict[int, mx.array], num_layers: int,
                   prompt_length: Optional[int] = None) -> list[tuple[str, Hook]]:
    """An ablate trial's hooks: its direction projected (by each layer's weight) out of every
    block's attention and MLP output, the writers `mlux bake --ablate` edits."""
    u = interpolated_direction(directions, float(params["layer"]))
    return weighted_ablation_hooks(u, layer_weights(params, num_layers),
                                   positions=params["window"], prompt_length=prompt_length)


def _groups(params: Params, rows: Sequence[list[int]], directions: dict[int, mx.array],
            num_layers: int) -> list[tuple[list[int], list[tuple[str, Hook]]]]:
    """(row indices, ablation hooks) batches: all rows at once for the window "all", else one
    batch per prompt length (plain hooks resolve "prompt" / "generated" by one length)."""
    if params["window"] == "all":
        return [(list(range(len(rows))), ablation_hooks(params, directions, num_layers))]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(rows):
        by_length.setdefault(len(ids), []).append(i)
    return [(idx, ablation_hooks(params, directions, num_layers, length))
            for length, idx in by_length.items()]


@dataclass
class TrialScorer:
    """Everything fixed across trials: model, directions, prompts (token ids), the scorer and
    its sampling, and the unsteered first-token logits of the harmless prompts."""

    hooked: HookedModel
    mode: str
    directions: dict[int, mx.array]
    residual: dict[int, float]
    prompts: list[list[int]]
    harmless: list[list[int]]
    scorer: Any
    samples: int = 2
    max_tokens: int = 24
    temperature: float = 1.0
    seed: int = 0
    score: str = "sampled"  # or "logodds"
    target: Sequence[int] = ()
    against: Sequence[int] = ()
    perplexity: bool = True
    avoid: list[list[int]] = field(default_factory=list)  # steer: where it must not appear
    reference: Optional[mx.array] = None  # (N_harmless, V)
    _tiled: dict[int, mx.array] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reference is None:
            self.reference = first_token_logits(self.hooked, self.harmless)
            self._tiled[1] = self.reference  # the same batch shape: reused, not recomputed

    def _reference(self, k: int) -> mx.array:
        """Unsteered logits of the harmless prompts repeated `k` times, from a batch of that
        very shape: a zero-strength row then has exactly the reference's logits (KL 0), not
        ones a different batch size rounded differently."""
        if k not in self._tiled:
            self._tiled[k] = first_token_logits(self.hooked, self.harmless * k)
        return self._tiled[k]

    def measure(self, trials: Sequence[Params]) -> list[Measurement]:
        if self.mode == "steer":
            rows = [steering_of(p, self.directions, self.residual, self.hooked.num_layers)
                    for p in trials]
            return self._measure_rows(rows)
        return [self._measure_ablation(p) for p in trials]

    # -- steer: every trial a block of rows ---------------------------------------------------
    def _measure_rows(self, rows: list[Steering]) -> list[Measurement]:
        k, h = len(rows), len(self.harmless)
        kls = first_token_kl(self.hooked, self.harmless * k, per_prompt=True,
                             steering=[r for r in rows for _ in range(h)],
                             reference=self._reference(k))
        main = self._row_behaviour(self.prompts, rows, self.perplexity)
        avoid = self._row_behaviour(self.avoid, rows, False) if self.avoid else None
        out = []
        for t, (behavior, extras) in enumerate(main):
            if avoid is not None:
                extras["false_positive"] = avoid[t][0]
            out.append(Measurement(behavior, sum(kls[t * h:(t + 1) * h]) / h, extras))
        return out

    def _row_behaviour(self, prompts: list[list[int]], rows: list[Steering], ppl: bool
                       ) -> list[tuple[float, dict[str, Any]]]:
        """Each row's behaviour on `prompts`: every (row, prompt[, sample]) one batch row."""
        k, n = len(rows), len(prompts)
        if self.score == "logodds":
            lo = token_logodds(self.hooked, prompts * k, self.target, self.against,
                               steering=[r for r in rows for _ in range(n)])
            return [self._logodds(lo[t * n:(t + 1) * n]) for t in range(k)]
        per = n * self.samples
        texts = self._generate(prompts, [r for r in rows for _ in range(per)], None, k)
        return [self._rated(texts[t * per:(t + 1) * per], prompts, ppl) for t in range(k)]

    # -- ablate: one trial at a time, its hooks on every writer --------------------------------
    def _measure_ablation(self, params: Params) -> Measurement:
        n = self.hooked.num_layers
        kls = [first_token_kl(self.hooked, [self.harmless[i] for i in idx], hooks,
                              reference=self.reference[mx.array(idx)], per_prompt=True)
               for idx, hooks in _groups(params, self.harmless, self.directions, n)]
        kl = sum(sum(part) for part in kls) / len(self.harmless)
        groups = _groups(params, self.prompts, self.directions, n)
        if self.score == "logodds":
            lo = [token_logodds(self.hooked, [self.prompts[i] for i in idx], self.target,
                                self.against, hooks) for idx, hooks in groups]
            behavior, extras = self._logodds(mx.concatenate(lo))
            return Measurement(behavior, kl, extras)
        out: list[tuple[str, list[int]]] = [("", [])] * (len(self.prompts) * self.samples)
        k = self.samples
        for idx, hooks in groups:
            got = self._generate([self.prompts[i] for i in idx], None, hooks, 1, first=idx)
            for j, i in enumerate(idx):  # back into prompt order
                out[i * k:(i + 1) * k] = got[j * k:(j + 1) * k]
        behavior, extras = self._rated(out, self.prompts, self.perplexity)
        return Measurement(behavior, kl, extras)

    # -- shared --------------------------------------------------------------------------------
    def _generate(self, prompts: list[list[int]], steering: Optional[list[Steering]],
                  hooks: Any, copies: int, first: Optional[list[int]] = None
                  ) -> list[tuple[str, list[int]]]:
        """`copies` x prompts x samples rows in one batch; seeds depend on (prompt, sample)
        only, so trials differ by their steering, not their luck."""
        index = first if first is not None else list(range(len(prompts)))
        ids = [p for _ in range(copies) for p in prompts for _ in range(self.samples)]
        seeds = [self.seed + 1000 * i + s for _ in range(copies) for i in index
                 for s in range(self.samples)]
        toks = generate_batch(self.hooked, ids, max_tokens=self.max_tokens, hooks=hooks,
                              steering=steering, temperature=self.temperature, seed=seeds)
        return [(self.hooked.tokenizer.decode(t), t) for t in toks]

    def _rated(self, got: list[tuple[str, list[int]]], prompts: list[list[int]], ppl: bool
               ) -> tuple[float, dict[str, Any]]:
        verdicts = [score_text(self.scorer, text) for text, _ in got]
        hits = sum(v is True for v in verdicts)
        extras: dict[str, Any] = {"labelled": sum(v is not None for v in verdicts),
                                  "samples": len(got), "texts": [t for t, _ in got[:3]]}
        if ppl:
            extras["perplexity"] = steered_perplexity(
                self.hooked, prompts, [t for _, t in got], self.samples)
        return hits / len(got), extras

    @staticmethod
    def _logodds(values: mx.array) -> tuple[float, dict[str, Any]]:
        """Mean log-odds and its sigmoid, the behaviour in 0..1 (computed without overflow)."""
        mean = float(values.mean().item())
        e = math.exp(-abs(mean))
        return (1.0 / (1.0 + e) if mean >= 0 else e / (1.0 + e)), {"logodds": mean}
