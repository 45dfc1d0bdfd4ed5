"""What every experiment shares: resumable JSON results, behaviour functions by name, prompt
files, default contrast sets, plots and the common command-line options."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..atomic import atomic_write, atomic_write_json
from ..behavior import Scorer
from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL
from ..evaluation import is_refusal
from ..model import HookedModel

__all__ = [
    "ResultFile",
    "add_common_arguments",
    "best_by_effect",
    "contrast_prompts",
    "load_prompts",
    "resolve_scorer",
    "save_plot",
]


class ResultFile:
    """A JSON result rewritten atomically as each cell finishes. Rerunning with the same
    settings resumes: finished cells are kept and skipped; other settings start afresh only
    with `fresh=True` (a clear error otherwise, so no finished work is lost by accident)."""

    def __init__(self, path: str | Path, kind: str, hooked: HookedModel,
                 settings: dict[str, Any], *, fresh: bool = False) -> None:
        from .. import __version__

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
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="layer")


def best_by_effect(effects: dict[int, float], top_k: int) -> list[int]:
    """Layers by decreasing effect (unmeasurable NaN effects last, ties to the lower layer)."""
    return sorted(effects, key=lambda i: (-(effects[i] if effects[i] == effects[i]
                                           else float("-inf")), i))[:top_k]


def timed_cell(result: ResultFile, key: str, fn: Callable[[], Any]) -> Any:
    """Compute a cell unless a previous run finished it."""
    if result.done(key):
        return result.get(key)
    t = time.perf_counter()
    value = fn()
    result.put(key, value, time.perf_counter() - t)
    return value


def cli_main(build_parser: Callable[[], argparse.ArgumentParser],
             run_cli: Callable[[argparse.Namespace], int], argv: Optional[Sequence[str]],
             name: str) -> int:
    """`python -m mlux.experiments.<name>`: parse, run, one clear line on expected errors."""
    from ..cli import run_guarded

    return run_guarded(lambda: run_cli(build_parser().parse_args(argv)), name)


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line), .json (list of strings) or .jsonl ("prompt"/"text")."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompt file {p} does not exist")
    text = p.read_text()
    if p.suffix == ".json":
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{p} must hold a JSON list of strings")
    elif p.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
        items = [x if isinstance(x, str) else x.get("prompt") or x.get("text") for x in items]
        if not all(isinstance(x, str) for x in items):
            raise ValueError(f"{p}: every JSONL line needs a 'prompt' or 'text' string")
    else:
        items = [line.strip() for line in text.splitlines()]
    items = [x for x in items if x.strip()]
    if not items:
        raise ValueError(f"prompt file {p} holds no prompts")
    return items


def contrast_prompts(model: str, feature: Optional[str]) -> tuple[list[str], list[str], list[str]]:
    """Default (positive, negative, test prompts): the built-in model's own features, else the
    demo's happy/sad contrast."""
    from ..demo import demo_task

    task = demo_task(model if model in BUILTIN_MODELS else "", feature)
    return list(task.positive), list(task.negative), list(task.prompts)


def resolve_scorer(spec: Optional[str], model: str,
                   feature: Optional[str] = None) -> tuple[Scorer, str]:
    """A behaviour function from a name: `toy:FEATURE=VALUE` (built-in model), `refusal`,
    `contains:w1,w2`, or `package.module:function`. None: the scorer of the default contrast
    task (the built-in model's `feature`, else the happy/sad word count)."""
    if spec is None:
        from ..demo import demo_task

        task = demo_task(model if model in BUILTIN_MODELS else "", feature)
        name = f"toy:{task.feature}={task.target}" if model in BUILTIN_MODELS else "happy_sad"
        return task.scorer, name
    if spec.startswith("toy:"):
        from ..toy import feature_scorer

        feature, _, value = spec[4:].partition("=")
        return feature_scorer(feature, value), spec
    if spec == "refusal":
        return is_refusal, spec
    if spec.startswith("contains:"):
        words = {w.strip().lower() for w in spec[9:].split(",") if w.strip()}
        if not words:
            raise ValueError("contains: needs at least one word, e.g. contains:happy,joy")
        return (lambda t: bool(words & {w.strip(".,!?").lower() for w in t.split()})), spec
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"unknown behaviour {spec!r}: use toy:FEATURE=VALUE, refusal, "
                         f"contains:w1,w2 or module:function ({e})") from e
    if not callable(fn):
        raise ValueError(f"behaviour {spec!r} is not callable")
    return fn, spec


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


def add_common_arguments(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="mlx-lm model (default: built-in)")
    p.add_argument("--positive", help="file of positive contrast prompts (.txt/.json/.jsonl)")
    p.add_argument("--negative", help="file of negative contrast prompts")
    p.add_argument("--prompts", help="file of test prompts to steer")
    p.add_argument("--feature", help="built-in model feature (sentiment, formality)")
    p.add_argument("--behavior", help="toy:FEATURE=VALUE | refusal | contains:w1,w2 | "
                   "module:function (default: the feature's first value)")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt per cell")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=output, help="JSON result (resumed if it exists)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: next to --output)")
    p.add_argument("--fresh", action="store_true", help="overwrite a previous result")


def prompts_from_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    pos, neg, test = contrast_prompts(args.model, args.feature)
    return (load_prompts(args.positive) if args.positive else pos,
            load_prompts(args.negative) if args.negative else neg,
            load_prompts(args.prompts) if args.prompts else test)


def plot_path(args: argparse.Namespace) -> Path:
    return Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from e
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def layer_ints(hooked: HookedModel, spec: Optional[str | Sequence[Any]]) -> list[int]:
    from ..extract import resolve_layers

    if spec is None:
        return list(range(hooked.num_layers))
    return resolve_layers(hooked, spec)
