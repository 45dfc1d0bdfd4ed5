"""The sweeps' command-line side: the options they share, prompt files, behaviour functions by
name, and `SweepInputs`, what every sweep verb starts from (model, vector, prompts, scorer)."""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..behavior import Scorer
from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL
from ..contrasts import contrast_task
from ..evaluation import is_refusal
from ..extract import METHODS, resolve_layers
from ..model import HookedModel
from ..toy import feature_scorer
from ..vectors import SteeringVector

__all__ = [
    "SweepInputs",
    "add_common_arguments",
    "contrast_prompts",
    "layer_ints",
    "load_prompts",
    "parse_floats",
    "plot_path",
    "resolve_scorer",
    "sweep_inputs",
]

RESUME_NOTE = "finished cells are saved; rerun the same command to resume"


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
    task = contrast_task(model if model in BUILTIN_MODELS else "", feature)
    return list(task.positive), list(task.negative), list(task.prompts)


def resolve_scorer(spec: Optional[str], model: str,
                   feature: Optional[str] = None) -> tuple[Scorer, str]:
    """A behaviour function from a name: `toy:FEATURE=VALUE` (built-in model), `refusal`,
    `contains:w1,w2`, or `package.module:function`. None: the scorer of the default contrast
    task (the built-in model's `feature`, else the happy/sad word count)."""
    if spec is None:
        task = contrast_task(model if model in BUILTIN_MODELS else "", feature)
        name = f"toy:{task.feature}={task.target}" if model in BUILTIN_MODELS else "happy_sad"
        return task.scorer, name
    if spec.startswith("toy:"):
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


def add_common_arguments(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="mlx-lm model (default: built-in)")
    p.add_argument("--positive", help="file of positive contrast prompts (.txt/.json/.jsonl)")
    p.add_argument("--negative", help="file of negative contrast prompts")
    p.add_argument("--vector", default=None, help="a saved vector (.safetensors/.gguf) "
                   "instead of contrast prompts")
    p.add_argument("--method", choices=METHODS, default="mean_diff",
                   help="how vectors are extracted from the contrast (default mean_diff)")
    p.add_argument("--chat", action="store_true", help="wrap every prompt (contrast and test) "
                   "in the model's chat template")
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


@dataclass
class SweepInputs:
    """What a sweep verb runs on, from its options: `vector` is the saved `--vector` or the
    contrast `(positive, negative)`; `settings` identify the run in its result file."""

    hooked: HookedModel
    vector: Any
    prompts: list[str]
    scorer: Scorer
    behavior: str
    settings: dict[str, Any]

    @property
    def common(self) -> dict[str, Any]:
        """The sampling keywords every sweep function takes."""
        s = self.settings
        return dict(samples_per_prompt=s["samples"], max_tokens=s["max_tokens"],
                    temperature=s["temperature"], seed=s["seed"], chat=s["chat"])


def sweep_inputs(args: argparse.Namespace) -> SweepInputs:
    hooked = HookedModel.from_pretrained(args.model)
    pos, neg, test = contrast_prompts(args.model, args.feature)
    test = load_prompts(args.prompts) if args.prompts else test
    scorer, behavior = resolve_scorer(args.behavior, args.model, args.feature)
    settings: dict[str, Any] = {
        "behavior": behavior, "samples": args.samples, "max_tokens": args.max_tokens,
        "temperature": args.temperature, "seed": args.seed, "chat": args.chat,
        "prompts": test}
    if args.vector:
        vector: Any = (SteeringVector.import_gguf(args.vector) if args.vector.endswith(".gguf")
                       else SteeringVector.load(args.vector, hidden_size=hooked.hidden_size))
        settings["vector"] = args.vector
    else:
        vector = (load_prompts(args.positive) if args.positive else pos,
                  load_prompts(args.negative) if args.negative else neg)
        settings.update(positive=vector[0], negative=vector[1], method=args.method)
    return SweepInputs(hooked, vector, test, scorer, behavior, settings)


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


def layer_ints(hooked: HookedModel, spec: Optional[str | Sequence[Any]]) -> Optional[list[int]]:
    """`--layers` as block indices; None when not given (the sweep's default)."""
    return None if spec is None else resolve_layers(hooked, spec)
