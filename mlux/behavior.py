"""Measure what steering does to behaviour: the rate of a target behaviour over sampled
continuations, per layer and alpha, with one prefill per prompt shared by every cell."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .evaluation import distinct_n, repetition_rate
from .generate import collect_rows, stream_rows
from .model import HookedModel
from .positions import Positions, resolve_positions
from .steering import Steering, directions_at

__all__ = ["BehaviorCell", "Prompt", "Scorer", "ScorerError", "behavior_rates", "prompt_ids"]

Scorer = Callable[[str], Optional[bool]]  # True = target behaviour, False = not, None = unclear
Prompt = Union[str, list[int]]  # text, or token ids as they are


class ScorerError(ValueError):
    """A behaviour function raised or returned something other than True, False or None."""


def prompt_ids(hooked: HookedModel, prompt: Prompt, chat: bool = False) -> list[int]:
    """One prompt's token ids: ids as given, text tokenized, or with `chat` text wrapped in the
    model's chat template (`hooked.encode_chat`, the one chat route)."""
    if chat and isinstance(prompt, str):
        return hooked.encode_chat(prompt)
    return hooked.tokenize(prompt).tokens[0].tolist()


@dataclass
class BehaviorCell:
    """One (layer, alpha) cell: how often the scorer saw the behaviour, and how coherent."""

    layer: Union[int, list[int], None]
    alpha: float
    rate: float  # of the samples the scorer could label
    labelled: int
    samples: int
    distinct_2: float
    repetition_3: float
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)  # every sample, when asked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LayerKey = Union[int, tuple[int, ...]]  # one layer, or several steered together


def _generate_rows(hooked: HookedModel, ids: list[int], rows: list[tuple[dict, float]],
                   seeds: list[int], *, max_tokens: int, temperature: float, max_batch: int,
                   positions: Positions) -> list[list[int]]:
    """Continue one prompt once per row `({layer: vector}, alpha)`, `max_batch` rows at a time
    (one batch, one shared prefill when only generated positions are steered)."""
    steer = [Steering(vecs, alpha, positions=positions) if alpha else None for vecs, alpha in rows]
    out: list[list[int]] = []
    for g in range(0, len(rows), max_batch):
        group = steer[g : g + max_batch]
        out += collect_rows(stream_rows(hooked, ids, group, max_tokens=max_tokens,
                                        temperature=temperature, seeds=seeds[g : g + max_batch]),
                            len(group))
    return out


def behavior_rates(
    hooked: HookedModel,
    vector: Any,
    prompts: Sequence[Prompt],
    scorer: Optional[Scorer],
    *,
    alphas: Iterable[float],
    layers: Optional[Iterable[LayerKey]] = None,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    keep_texts: int = 4,
    keep_tokens: bool = False,
    max_batch: int = 32,
    positions: Positions = "all",
    chat: bool = False,
) -> list[BehaviorCell]:
    """Steer with `alpha * vector[layer]` and score each continuation.

    `vector` is a `SteeringVector` or `{layer: (D,) array}` (every layer of it unless `layers`
    says), or one `(D,)` array added at each of `layers`. A `layers` entry may be a tuple: those
    layers are steered together. `prompts` are strings or token-id lists; with `chat` strings
    are wrapped in the model's chat template (`hooked.encode_chat`). Every (layers, alpha,
    sample) of a prompt is a row of one batch; with `positions` "generated" they share one
    prefill of `prompt[:-1]`, with "all" (the default) the prompt is steered too. Seeds depend
    on (prompt, sample) only, so cells differ by their steering, not their luck; alpha 0 is
    generated once and shared by every layer.
    """
    alphas = [float(a) for a in alphas]
    if not prompts:
        raise ValueError("behaviour measurement needs at least one prompt")
    resolve_positions(positions, 1)  # validate before any work
    flat = None if layers is None else [i for k in layers for i in (k if isinstance(k, tuple)
                                                                     else (k,))]
    vectors = directions_at(vector, flat)
    keys = [k if isinstance(k, tuple) else (k,) for k in (vectors if layers is None else layers)]
    cells = [(key, alpha) for key in keys for alpha in alphas]
    unique = list(dict.fromkeys((key if a else (), a) for key, a in cells))
    texts: dict[tuple, list[tuple[str, list[int]]]] = {u: [] for u in unique}
    for pi, prompt in enumerate(prompts):
        ids = prompt_ids(hooked, prompt, chat)
        rows = [(u, s) for u in unique for s in range(samples_per_prompt)]
        spec = [({i: vectors[i] for i in u[0]}, u[1]) for u, _ in rows]
        seeds = [seed + 1000 * pi + s for _, s in rows]
        outs = _generate_rows(hooked, ids, spec, seeds, max_tokens=max_tokens,
                              temperature=temperature, max_batch=max_batch, positions=positions)
        for (u, _), toks in zip(rows, outs, strict=True):
            texts[u].append((hooked.tokenizer.decode(toks), toks))
    result = []
    for key, alpha in cells:
        got = texts[(key if alpha else (), alpha)]
        verdicts = [_score(scorer, t) for t, _ in got]
        labelled = [v for v in verdicts if v is not None]
        result.append(BehaviorCell(
            layer=key[0] if len(key) == 1 else list(key), alpha=alpha,
            rate=sum(map(bool, labelled)) / len(labelled) if labelled else float("nan"),
            labelled=len(labelled), samples=len(got),
            distinct_2=sum(distinct_n(toks, 2) for _, toks in got) / len(got),
            repetition_3=sum(repetition_rate(toks, 3) for _, toks in got) / len(got),
            texts=[t for t, _ in got[:keep_texts]],
            token_ids=[toks for _, toks in got] if keep_tokens else []))
    return result


def _score(scorer: Optional[Scorer], text: str) -> Optional[bool]:
    if scorer is None:
        return None
    try:
        verdict = scorer(text)
    except Exception as e:  # name the culprit instead of failing deep inside a sweep
        name = getattr(scorer, "__name__", repr(scorer))
        raise ScorerError(f"behaviour function {name} raised {e!r} on the text "
                          f"{text[:80]!r}") from e
    if verdict is not None and not isinstance(verdict, (bool, int)):
        raise ScorerError(f"behaviour function must return True, False or None; got "
                          f"{type(verdict).__name__}")
    return None if verdict is None else bool(verdict)
