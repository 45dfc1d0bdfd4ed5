"""Measure what steering does to behaviour: the rate of a target behaviour over sampled
continuations, per layer and alpha, with one prefill per prompt shared by every cell."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import mlx.core as mx

from .generate import generate_from_cache, prefill_with_cache
from .interventions import create_steering_hook
from .model import HookedModel

__all__ = ["BehaviorCell", "behavior_rates", "distinct_n", "repetition"]

Scorer = Callable[[str], Optional[bool]]  # True = target behaviour, False = not, None = unclear


def distinct_n(tokens: Sequence[Any], n: int = 2) -> float:
    """Distinct n-grams / all n-grams (1.0 = no repetition; collapses toward 0 in loops)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition(tokens: Sequence[Any], n: int = 3) -> float:
    return 1.0 - distinct_n(tokens, n)


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
) -> list[BehaviorCell]:
    """Steer generated positions with `alpha * vectors[layer]` and score each continuation.

    Every prompt is prefilled once; the steering leaves the prompt untouched, so every
    (layer, alpha, sample) continues from that one cache. Seeds depend on (prompt, sample)
    only, so cells differ by their steering, not their luck.
    """
    layers = list(vectors) if layers is None else list(layers)
    alphas = [float(a) for a in alphas]
    if not prompts:
        raise ValueError("behaviour measurement needs at least one prompt")
    tok = hooked.tokenizer
    prefills = []
    for p in prompts:
        ids = hooked.tokenize(p).tokens[0].tolist()
        prefills.append((len(ids), *prefill_with_cache(hooked, ids)))
    cells = []
    for layer in layers:
        for alpha in alphas:
            texts, hits, labelled, d2, rep = [], 0, 0, 0.0, 0.0
            for pi, (n, cache, logits) in enumerate(prefills):
                hook = create_steering_hook(vectors[layer], alpha, positions="generated",
                                            prompt_length=n)
                for s in range(samples_per_prompt):
                    ids = generate_from_cache(
                        hooked, cache, logits, max_tokens=max_tokens,
                        hooks={f"residuals_{layer}": hook} if alpha else None,
                        temperature=temperature, seed=seed + 1000 * pi + s)
                    text = tok.decode(ids)
                    verdict = scorer(text)
                    if verdict is not None:
                        labelled += 1
                        hits += bool(verdict)
                    d2 += distinct_n(ids, 2)
                    rep += repetition(ids, 3)
                    texts.append(text)
            total = len(prompts) * samples_per_prompt
            cells.append(BehaviorCell(
                layer=layer, alpha=alpha, rate=hits / labelled if labelled else float("nan"),
                labelled=labelled, samples=total, distinct_2=d2 / total,
                repetition_3=rep / total, texts=texts[:keep_texts]))
    return cells
