"""Measure what steering does to behaviour: the rate of a target behaviour over sampled
continuations, per layer and alpha, with one prefill per prompt shared by every cell."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import mlx.core as mx

from .batch import Steering, decode_batch, merge_prefills, row_steering_hooks
from .evaluation import distinct_n, repetition_rate
from .generate import generate_from_cache, prefill_with_cache
from .interventions import create_steering_hook
from .model import HookedModel

__all__ = ["BehaviorCell", "Scorer", "behavior_rates"]

Scorer = Callable[[str], Optional[bool]]  # True = target behaviour, False = not, None = unclear


@dataclass
class BehaviorCell:
    """One (layer, alpha) cell: how often the scorer saw the behaviour, and how coherent."""

    layer: Optional[int]
    alpha: float
    rate: float  # of the samples the scorer could label
    labelled: int
    samples: int
    distinct_2: float
    repetition_3: float
    texts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _generate_rows(hooked: HookedModel, ids: list[int], rows: list[tuple[int, float, Any]],
                   seeds: list[int], *, max_tokens: int, temperature: float, max_batch: int,
                   ) -> list[list[int]]:
    """Continue one prompt once per row `(layer, alpha, vector)`; one prefill for all rows,
    decoded as batches when the architecture allows it."""
    n = len(ids)
    cache, logits = prefill_with_cache(hooked, ids)
    out: list[list[int]] = []
    if not hooked._supports_padded_batch():
        for (layer, alpha, vec), s in zip(rows, seeds, strict=True):
            hook = create_steering_hook(vec, alpha, positions="generated", prompt_length=n)
            out.append(generate_from_cache(
                hooked, cache, logits, max_tokens=max_tokens, temperature=temperature, seed=s,
                hooks={f"residuals_{layer}": hook} if alpha else None))
        return out
    for g in range(0, len(rows), max_batch):
        group, group_seeds = rows[g : g + max_batch], seeds[g : g + max_batch]
        steering = [Steering({layer: vec}, alpha, positions="generated") if alpha else None
                    for layer, alpha, vec in group]
        hooks = row_steering_hooks(hooked, steering, [n] * len(group))
        out += decode_batch(hooked, merge_prefills([cache] * len(group)),
                            mx.repeat(logits[None], len(group), axis=0), max_tokens=max_tokens,
                            hooks=hooks, temperature=temperature, seed=group_seeds)
    return out


def behavior_rates(
    hooked: HookedModel,
    vectors: Mapping[int, mx.array],
    prompts: Sequence[str],
    scorer: Scorer,
    *,
    alphas: Iterable[float],
    layers: Optional[Iterable[int]] = None,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    keep_texts: int = 4,
    max_batch: int = 32,
) -> list[BehaviorCell]:
    """Steer generated positions with `alpha * vectors[layer]` and score each continuation.

    Every prompt is prefilled once and every (layer, alpha, sample) continues from that cache,
    as rows of one batch. Seeds depend on (prompt, sample) only, so cells differ by their
    steering, not their luck; alpha 0 is generated once and shared by every layer.
    """
    layers = list(vectors) if layers is None else list(layers)
    alphas = [float(a) for a in alphas]
    if not prompts:
        raise ValueError("behaviour measurement needs at least one prompt")
    missing = [i for i in layers if i not in vectors]
    if missing:
        raise ValueError(f"no vector for layers {missing}")
    cells = [(layer, alpha) for layer in layers for alpha in alphas]
    unique = list(dict.fromkeys((layer if a else None, a) for layer, a in cells))
    texts: dict[tuple, list[tuple[str, list[int]]]] = {u: [] for u in unique}
    for pi, prompt in enumerate(prompts):
        ids = hooked.tokenize(prompt).tokens[0].tolist()
        rows = [(u, s) for u in unique for s in range(samples_per_prompt)]
        spec = [(u[0] if u[0] is not None else layers[0], u[1],
                 vectors[u[0] if u[0] is not None else layers[0]]) for u, _ in rows]
        seeds = [seed + 1000 * pi + s for _, s in rows]
        outs = _generate_rows(hooked, ids, spec, seeds, max_tokens=max_tokens,
                              temperature=temperature, max_batch=max_batch)
        for (u, _), toks in zip(rows, outs, strict=True):
            texts[u].append((hooked.tokenizer.decode(toks), toks))
    result = []
    for layer, alpha in cells:
        got = texts[(layer if alpha else None, alpha)]
        verdicts = [scorer(t) for t, _ in got]
        labelled = [v for v in verdicts if v is not None]
        result.append(BehaviorCell(
            layer=layer, alpha=alpha,
            rate=sum(map(bool, labelled)) / len(labelled) if labelled else float("nan"),
            labelled=len(labelled), samples=len(got),
            distinct_2=sum(distinct_n(toks, 2) for _, toks in got) / len(got),
            repetition_3=sum(repetition_rate(toks, 3) for _, toks in got) / len(got),
            texts=[t for t, _ in got[:keep_texts]]))
    return result
