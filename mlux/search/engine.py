"""`search`: optuna's multi-objective TPE over layer, strength, window (and a per-layer
profile), each trial scored for behaviour and first-token KL; trials asked a batch at a time
and decoded as rows of one batch (steer)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx
import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from ..atomic import PathLike, atomic_write_json
from ..behavior import Prompt, Scorer, prompt_ids
from ..experiments.common import _jsonable, residual_norms, sweep_directions
from ..model import HookedModel
from .objectives import TrialScorer
from .result import SearchResult, Trial
from .space import MODES, SearchSpace, suggest
from .study import digest, open_study, prompt_digest
from .tokens import token_ids

__all__ = ["SCHEMA", "search"]

SCHEMA = "mlux.search/1"


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check(trials: int, mode: str, prompts: Sequence[Prompt], harmless: Sequence[Prompt],
           scorer: Optional[Scorer], score: str, target: Sequence[str],
           sampling: dict[str, Any]) -> None:
    for name in ("trials", "samples", "max_tokens", "batch"):
        _positive_int(name, trials if name == "trials" else sampling[name])
    if not sampling["temperature"] >= 0:
        raise ValueError(f"temperature must be >= 0, got {sampling['temperature']!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if not prompts:
        raise ValueError("search needs at least one prompt to measure the behaviour on")
    if not harmless:
        raise ValueError("search needs at least one harmless prompt to measure the damage on")
    if score not in ("sampled", "logodds"):
        raise ValueError(f"unknown score {score!r}; choose from sampled, logodds")
    if score == "logodds" and not target:
        raise ValueError("the log-odds score needs target words (the behaviour's token set)")
    if score == "sampled" and scorer is None:
        raise ValueError("the sampled score needs a behaviour function (scorer); without one "
                         "use score='logodds' with target words")


def _directions(hooked: HookedModel, vector: Any, prompts: Sequence[Prompt], chat: bool
                ) -> tuple[dict[int, mx.array], dict[int, float]]:
    check = getattr(vector, "check_compatible", None)
    if check is not None:
        check(hooked.hidden_size, hooked.num_layers)
    directions, acts = sweep_directions(hooked, vector, chat=chat)
    bad = {i: tuple(v.shape) for i, v in directions.items() if v.shape != (hooked.hidden_size,)}
    if bad:
        raise ValueError(f"the vector's directions have shapes {bad}; the model's hidden size "
                         f"is {hooked.hidden_size} (a vector of another model?)")
    return directions, residual_norms(hooked, list(directions), acts, prompts, chat)


def _within(space: SearchSpace, directions: dict[int, mx.array], num_layers: int
            ) -> SearchSpace:
    """The space resolved against the vector: by default its own layers (but the model's last
    fifth); every whole layer of the span must have a direction (the fractional layer
    interpolates between neighbours)."""
    if space.layers is None:
        cap = SearchSpace().resolved(num_layers).layers[1]
        low = float(min(directions))
        space = dataclasses.replace(space, layers=(low, max(low, min(float(max(directions)),
                                                                      cap))))
    space = space.resolved(num_layers)
    low, high = space.layers
    missing = [i for i in range(math.floor(low), math.ceil(high) + 1) if i not in directions]
    if missing:
        raise ValueError(f"the vector has no direction at layers {missing} of the layer range "
                         f"{low:g}-{high:g}; it has {sorted(directions)}: pass a range inside "
                         "them")
    return space


def search(
    hooked: HookedModel,
    vector_or_contrast: Any,
    prompts: Sequence[Prompt],
    scorer: Optional[Scorer],
    *,
    harmless: Sequence[Prompt],
    trials: int,
    mode: str = "steer",
    seed: Optional[int] = None,
    out: Optional[PathLike] = None,
    space: Optional[SearchSpace] = None,
    behavior: str = "custom",
    score: str = "sampled",
    target: Sequence[str] = (),
    against: Sequence[str] = (),
    samples: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    batch: int = 4,
    chat: bool = False,
    perplexity: bool = True,
    avoid: Sequence[Prompt] = (),
    fresh: bool = False,
    progress: bool = False,
) -> SearchResult:
    """Search steering (or ablation) parameters that move the behaviour at the least damage.

    `vector_or_contrast`: a `SteeringVector` / `{layer: (D,)}` or a contrast `(positive,
    negative)` extracted at every layer. `prompts` carry the behaviour (`scorer` labels their
    sampled continuations; with `score="logodds"` the log-odds of the `target` words' tokens
    against `against` at the last prompt position is used instead, no generation); damage is
    the first-token KL from the unsteered model on `harmless`. Steer mode maximises the
    behaviour, ablate mode minimises it. With `out` the study lives in that folder: a rerun
    continues it until `trials` trials are complete (the interrupted ones finished first).
    `avoid` (steer): prompts where the behaviour must not appear; its rate there is a third
    objective, minimised (a false-positive penalty, heretic's #210).
    """
    _check(trials, mode, prompts, harmless, scorer, score, target,
           dict(samples=samples, max_tokens=max_tokens, batch=batch, temperature=temperature))
    if avoid and mode != "steer":
        raise ValueError("avoid prompts (a false-positive penalty) go with mode steer: an "
                         "ablation only removes the behaviour")
    space = space or SearchSpace()
    space.resolved(hooked.num_layers)  # bad ranges fail before any extraction
    directions, residual = _directions(hooked, vector_or_contrast, prompts, chat)
    space = _within(space, directions, hooked.num_layers)
    test = [prompt_ids(hooked, p, chat) for p in prompts]
    neutral = [prompt_ids(hooked, p, chat) for p in harmless]
    elsewhere = [prompt_ids(hooked, p, chat) for p in avoid]
    tok = hooked.tokenizer
    settings = {"mode": mode, "behavior": behavior, "score": score, "space": space.to_dict(),
                "samples": samples, "max_tokens": max_tokens, "temperature": temperature,
                "seed": seed, "chat": chat, "model": str(hooked.model_id),
                "vector": digest(directions), "target": list(target), "against": list(against),
                "prompts": {"behavior": prompt_digest(test), "harmless": prompt_digest(neutral),
                            **({"avoid": prompt_digest(elsewhere)} if elsewhere else {})}}
    folder = None if out is None else Path(out).expanduser()
    goals = ["maximize" if mode == "steer" else "minimize", "minimize"] + \
        (["minimize"] if elsewhere else [])
    with open_study(folder, settings, hooked, goals, seed, fresh) as study:
        scoring = TrialScorer(
            hooked, mode, directions, residual, test, neutral, scorer, samples=samples,
            max_tokens=max_tokens, temperature=temperature, seed=seed or 0, score=score,
            target=token_ids(tok, target) if score == "logodds" else (),
            against=token_ids(tok, against) if score == "logodds" and against else (),
            perplexity=perplexity and score == "sampled", avoid=elsewhere)
        _run(study, scoring, space, mode, trials, batch, progress)
        done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                      key=lambda t: t.number)
        result = SearchResult(mode, [Trial(t.number, t.user_attrs["params"], t.values[0],
                                           t.values[1], t.user_attrs.get("extras", {}))
                                     for t in done],
                              settings, directions, residual, hooked.num_layers, hooked.model_id)
        if folder is not None:
            atomic_write_json(folder / "search.json", _jsonable(
                {"schema": SCHEMA, "model": str(hooked.model_id), **result.to_dict()}))
    return result


def _run(study: optuna.Study, scoring: TrialScorer, space: SearchSpace, mode: str,
         trials: int, batch: int, progress: bool) -> None:
    """Ask `batch` trials at a time until `trials` are complete: never more, none evaluated
    twice. Trials an interrupted run left running are marked failed and their parameters
    queued again, so they are evaluated (once) before new ones are drawn."""
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"resumed_from": t.number})
    bar = tqdm(total=trials, initial=complete, desc="trials", unit="trial", disable=not progress)
    try:
        while complete < trials:
            asked = [study.ask() for _ in range(min(batch, trials - complete))]
            params = [suggest(t, space, mode) for t in asked]
            for t, p in zip(asked, params, strict=True):
                t.set_user_attr("params", p)
            for t, m in zip(asked, scoring.measure(params), strict=True):
                t.set_user_attr("extras", _jsonable(m.extras))
                # A diverged forward is the worst damage, not a NaN optuna refuses.
                values = [m.behavior, m.kl if m.kl == m.kl else float("inf")]
                study.tell(t, values + ([m.extras["false_positive"]]
                                        if "false_positive" in m.extras else []))
                complete += 1
                bar.update(1)
    finally:
        bar.close()
