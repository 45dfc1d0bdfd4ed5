"""What the sweeps share: the vector a sweep steers with (a ready vector or a contrast to
extract from), resumable JSON results, cells, ranking and plots. The command-line side (prompt
files, behaviour functions by name, common options) is `mlux.experiments.options`."""

from __future__ import annotations

import json
import statistics
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_write, atomic_write_json
from ..behavior import Prompt, prompt_ids
from ..evaluation import perplexity, wilson_interval
from ..extract import extract_with_activations, last_token_activations
from ..model import HookedModel
from ..steering import directions_at

__all__ = [
    "MIN_LABELLED",
    "PERPLEXITY_RATIO",
    "ResultFile",
    "best_by_effect",
    "finish_axes",
    "is_contrast",
    "progress_bar",
    "rate_interval",
    "rate_text",
    "require_rates",
    "residual_norms",
    "save_plot",
    "steered_perplexity",
    "sweep_directions",
    "timed_cell",
    "warn_if_few_labelled",
]

# Steered text this many times more perplexing to the unsteered model than unsteered text is
# word salad, whatever its distinct-2 says (calibration's threshold; the layer sweep's filter).
PERPLEXITY_RATIO = 4.0
# Fewer labelled samples than this in a cell: its rate is too uncertain to rank on (a warning).
MIN_LABELLED = 10


class ResultFile:
    """A JSON result rewritten atomically as each cell finishes. Rerunning with the same
    settings resumes: finished cells are kept and skipped; other settings start afresh only
    with `fresh=True` (a clear error otherwise, so no finished work is lost by accident)."""

    def __init__(self, path: str | Path, kind: str, hooked: HookedModel,
                 settings: dict[str, Any], *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {
            "schema": f"mlux.{kind}/1", "kind": kind, "mlux_version": __version__,
            "model": {"id": hooked.model_id, "type": hooked.model_type,
                      "num_layers": hooked.num_layers, "hidden_size": hooked.hidden_size,
                      "quantization": hooked.quantization},
            "settings": settings, "started": _now(), "finished": None, "cells": {},
            "timings": {}, "summary": None,
        }
        if self.path.exists() and not fresh:
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{self.path} exists but is not a readable result file ({e}); "
                                 "pass --fresh to overwrite it") from e
            if old.get("kind") != kind or old.get("settings") != json.loads(json.dumps(settings)):
                raise ValueError(f"{self.path} holds a {old.get('kind')} run with other settings;"
                                 " pass --fresh to overwrite it or choose another --output")
            self.data["cells"], self.data["timings"] = old["cells"], old.get("timings", {})
            self.data["started"] = old.get("started", self.data["started"])
        self.save()  # fail now, not after an hour, if the output can't be written

    @property
    def resumed(self) -> int:
        return len(self.data["cells"])

    def done(self, key: str) -> bool:
        return key in self.data["cells"]

    def get(self, key: str) -> Any:
        return self.data["cells"][key]

    def put(self, key: str, value: Any, seconds: float) -> None:
        self.data["cells"][key] = value
        self.data["timings"][key] = round(seconds, 3)
        self.save()

    def finish(self, summary: Any) -> None:
        self.data["summary"], self.data["finished"] = summary, _now()
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, _jsonable(self.data))


def _jsonable(value: Any) -> Any:
    """NaN/inf (an unmeasurable rate, a diverged perplexity) become null: strict JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def progress_bar(items: Sequence[Any], show: bool, desc: str = "layers",
                 unit: str = "layer") -> Any:
    """`items`, wrapped in a tqdm bar when `show` (CLI runs), as they are otherwise."""
    if not show:
        return items
    return tqdm(items, desc=desc, unit=unit)


def best_by_effect(effects: dict[int, float], top_k: int) -> list[int]:
    """Layers by decreasing effect, ties to the lower layer; an unmeasurable (NaN) effect is
    never ranked."""
    measured = [i for i, e in effects.items() if e == e]
    return sorted(measured, key=lambda i: (-effects[i], i))[:top_k]


def rate_interval(rate: float, labelled: int) -> tuple[float, float]:
    """Wilson 95% interval of a rate measured over `labelled` samples (NaNs if none)."""
    if not labelled or rate != rate:
        return float("nan"), float("nan")
    return wilson_interval(round(rate * labelled), labelled)


def rate_text(rate: float, labelled: int) -> str:
    """A rate as printed by the sweeps: `53% [36-69%] n=32` (Wilson 95% interval over the
    `labelled` samples), `n/a (n=0)` when nothing was labelled."""
    if not labelled or rate != rate:
        return "n/a (n=0)"
    low, high = rate_interval(rate, labelled)
    return f"{rate:.0%} [{low:.0%}-{high:.0%}] n={labelled}"


def warn_if_few_labelled(counts: Sequence[tuple[int, int]], behavior: str) -> None:
    """Warn when a cell's rate rests on few samples: `counts` are (labelled, samples) per
    cell; the behaviour function returns None for samples it cannot judge."""
    if not counts:
        return
    labelled, samples = min(counts, key=lambda c: c[0] / max(c[1], 1))
    if labelled < MIN_LABELLED or labelled < samples / 2:
        warnings.warn(f"only {labelled} of {samples} samples in a cell were labelled by "
                      f"{behavior} (the rest it could not judge): rates and intervals rest on "
                      "few samples; raise --samples or give more --prompts", stacklevel=2)


def require_rates(rates: Sequence[float], behavior: str) -> None:
    """A sweep whose every rate is NaN measured nothing: a clear error, not a ranking."""
    if rates and all(r != r for r in rates):
        raise ValueError(f"the behaviour function {behavior} labelled none of the samples (it "
                         "returned None for every one), so no rate could be measured; check "
                         "--behavior, or raise --max-tokens so it has text to judge")


def steered_perplexity(hooked: HookedModel, prompts: Sequence[Prompt],
                       token_ids: Sequence[Sequence[int]], samples_per_prompt: int,
                       chat: bool = False) -> float:
    """Median perplexity of continuations (`samples_per_prompt` per prompt, in prompt order, as
    `behavior_rates(..., keep_tokens=True)` keeps them) under the model as it is, unsteered: a
    coherence measure that sees word salad, which distinct-2 scores as perfectly varied. inf
    when no continuation has a finite perplexity."""
    values = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(hooked, prompt, chat)
        for toks in token_ids[i * samples_per_prompt : (i + 1) * samples_per_prompt]:
            values.append(perplexity(hooked, ids, toks))
    good = [v for v in values if v == v and v != float("inf")]
    return statistics.median(good) if good else float("inf")


def timed_cell(result: Optional[ResultFile], key: str, fn: Callable[[], Any]) -> Any:
    """Compute a cell unless a previous run finished it (no result file: just compute it)."""
    if result is None:
        return fn()
    if result.done(key):
        return result.get(key)
    t = time.perf_counter()
    value = fn()
    result.put(key, value, time.perf_counter() - t)
    return value


def save_plot(path: str | Path, draw: Callable[[Any], None]) -> Path:
    """Draw on a fresh matplotlib axes (Agg) and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        draw(ax)
        fig.tight_layout()
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png",
                                                                bbox_inches="tight"))
    finally:
        plt.close(fig)


def finish_axes(ax: Any, *, integer_x: bool = False) -> None:
    """The legend beside the data (never over it); integer x ticks for layer axes."""
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              fontsize="small")


def is_contrast(vector: Any) -> bool:
    """True for a contrast `(positive prompts, negative prompts)` rather than a vector."""
    return (isinstance(vector, tuple) and len(vector) == 2
            and all(isinstance(side, (list, tuple)) and all(isinstance(p, str) for p in side)
                    for side in vector))


def sweep_directions(
    hooked: HookedModel, vector: Any, layers: Optional[Sequence[int]] = None, *,
    method: str = "mean_diff", chat: bool = False,
) -> tuple[dict[int, mx.array], Optional[dict[int, mx.array]]]:
    """The float32 `(D,)` direction a sweep steers with at each layer, and the last-token
    activations `(N, D)` they were extracted from (None for a ready vector).

    `vector` is a `SteeringVector` or `{layer: (D,) array}` (narrowed to `layers`), one `(D,)`
    array (placed at each of `layers`), or a contrast `(positive, negative)` of prompts,
    extracted at `layers` (default: every layer) by `method` (mean_diff | pca), each prompt
    wrapped in the model's chat template with `chat`, all layers from one batched pass.
    """
    if is_contrast(vector):
        layers = range(hooked.num_layers) if layers is None else layers
        vec, acts = extract_with_activations(hooked, vector[0], vector[1], list(layers),
                                             method=method, chat=chat)
        return dict(vec.items()), acts
    return {i: mx.array(v, dtype=mx.float32)
            for i, v in directions_at(vector, layers).items()}, None


def residual_norms(hooked: HookedModel, layers: Sequence[int],
                   acts: Optional[dict[int, mx.array]], prompts: Sequence[Prompt],
                   chat: bool = False) -> dict[int, float]:
    """Each layer's mean residual norm at the last token: of the contrast prompts when their
    activations `acts` are at hand (`sweep_directions`), else of `prompts`."""
    if acts is None:
        acts = last_token_activations(hooked, [prompt_ids(hooked, p, chat) for p in prompts],
                                      list(layers))
    return {i: float(mx.linalg.norm(acts[i], axis=-1).mean().item()) for i in layers}
