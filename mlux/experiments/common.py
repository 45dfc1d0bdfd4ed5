"""What the sweeps share: the vector a sweep steers with (a ready vector or a contrast to
extract from), resumable JSON results, cells, ranking and plots. The command-line side (prompt
files, behaviour functions by name, common options) is `mlux.experiments.options`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_write, atomic_write_json
from ..behavior import Prompt, prompt_ids
from ..extract import extract_with_activations, last_token_activations
from ..model import HookedModel
from ..steering import directions_at

__all__ = [
    "ResultFile",
    "best_by_effect",
    "is_contrast",
    "progress_bar",
    "residual_norms",
    "save_plot",
    "sweep_directions",
    "timed_cell",
]


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


def progress_bar(items: Sequence[Any], show: bool, desc: str = "layers") -> Any:
    """`items`, wrapped in a tqdm bar when `show` (CLI runs), as they are otherwise."""
    if not show:
        return items
    return tqdm(items, desc=desc, unit="layer")


def best_by_effect(effects: dict[int, float], top_k: int) -> list[int]:
    """Layers by decreasing effect (unmeasurable NaN effects last, ties to the lower layer)."""
    return sorted(effects, key=lambda i: (-(effects[i] if effects[i] == effects[i]
                                           else float("-inf")), i))[:top_k]


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
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)




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
