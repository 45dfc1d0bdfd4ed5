"""The sweeps' command-line side: the options they share, prompt files, behaviour functions by
name, and `SweepInputs`, what every sweep verb starts from (model, vector, prompts, scorer)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..behavior import Scorer
from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL
from ..contrasts import contrast_task
from ..entry import int_in
from ..evaluation import is_refusal
from ..extract import METHODS, resolve_layers
from ..model import HookedModel
from ..toy import feature_scorer
from ..vectors import SteeringVector

__all__ = [
    "SweepInputs",
    "add_common_arguments",
    "add_contrast_arguments",
    "add_model_argument",
    "check_chat",
    "float_at_least",
    "probability",
    "check_output_folders",
    "contrast_from_args",
    "contrast_prompts",
    "layer_ints",
    "load_prompts",
    "load_vector",
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
        fn = getattr(_import_from_cwd(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"unknown behaviour {spec!r}: use toy:FEATURE=VALUE, refusal, "
                         f"contains:w1,w2 or module:function ({e})") from e
    if not callable(fn):
        raise ValueError(f"behaviour {spec!r} is not callable")
    return fn, spec


def _import_from_cwd(module: str) -> Any:
    """Import `module`, also from the current folder: `python -m` puts it on `sys.path`, the
    `mlux` command does not, and `--behavior myscorer:fn` should mean the same under both."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise  # the module was found; something it imports is missing
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module)
    finally:
        sys.path.remove(cwd)


def float_at_least(low: float) -> Any:
    """An argparse `type`: a float >= `low`."""

    def parse(text: str) -> float:
        value = float(text)  # a ValueError is argparse's "invalid float value: 'x'"
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def probability(text: str) -> float:
    """An argparse `type` for `--top-p`: a float in (0, 1], checked before anything runs."""
    value = float(text)  # a ValueError is argparse's "invalid probability value: 'x'"
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_model_argument(p: argparse.ArgumentParser, **overrides: Any) -> None:
    """`--model`, the same on every verb that takes a model (default: the built-in model)."""
    kwargs: dict[str, Any] = dict(default=DEFAULT_MODEL, help="model directory, hub id or "
                                  f"built-in name ({', '.join(BUILTIN_MODELS)})")
    p.add_argument("--model", **{**kwargs, **overrides})


def check_chat(hooked: HookedModel, chat: bool) -> None:
    """Refuse `--chat` for a model whose chat template would change nothing: none at all, or
    one that only joins the messages' text (the built-in model's)."""
    if not chat:
        return
    template = getattr(hooked.tokenizer, "chat_template", None)
    probe = "mlux probe"
    rendered = None if template is None else hooked.tokenizer.apply_chat_template(
        [{"role": "user", "content": probe}], add_generation_prompt=True, tokenize=False)
    if template is None or str(rendered).strip() == probe:
        what = "has no chat template" if template is None else (
            "has no chat template that adds anything (it only joins the messages' text)")
        raise ValueError(f"--chat: model {hooked.model_id!r} {what}; leave --chat out")


def add_contrast_arguments(p: argparse.ArgumentParser) -> None:
    """Where a vector comes from: a model and a contrast (two files, or a built-in set)."""
    add_model_argument(p)
    p.add_argument("--positive", metavar="FILE", help="positive contrast prompts, one per line "
                   "(.txt; or .json list / .jsonl); needs --negative (default: the built-in set)")
    p.add_argument("--negative", metavar="FILE", help="negative contrast prompts; needs "
                   "--positive (default: the built-in set)")
    p.add_argument("--feature", help="built-in contrast set: the built-in model's sentiment or "
                   "formality (default: sentiment; other models: happy/sad)")
    p.add_argument("--method", choices=METHODS, default="mean_diff",
                   help="how vectors are extracted from the contrast")
    p.add_argument("--chat", action="store_true", help="wrap every prompt in the model's chat "
                   "template (default: plain text)")


def add_common_arguments(p: argparse.ArgumentParser, output: str) -> None:
    add_contrast_arguments(p)
    p.add_argument("--vector", default=None, metavar="FILE", help="a saved vector "
                   "(.safetensors/.gguf) instead of contrast prompts (default: extract one)")
    p.add_argument("--prompts", metavar="FILE", help="test prompts to steer, one per line "
                   "(default: the contrast set's test prompts)")
    p.add_argument("--behavior", help="toy:FEATURE=VALUE | refusal | contains:w1,w2 | "
                   "module:function, the module found in the current folder too (default: the "
                   "feature's first value)")
    p.add_argument("--samples", type=int_in(1), default=2, help="samples per prompt per cell")
    p.add_argument("--max-tokens", type=int_in(1), default=24, help="tokens per sample")
    p.add_argument("--temperature", type=float_at_least(0.0), default=1.0,
                   help="sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int_in(0), default=0, help="first sampling seed")
    p.add_argument("--output", default=output, help="JSON result (resumed if it exists)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: next to --output)")
    p.add_argument("--fresh", action="store_true", help="overwrite a previous result "
                   "(default: resume it)")


def check_output_folders(*paths: Optional[str | Path]) -> None:
    """Refuse before any work when an output's folder does not exist."""
    for path in paths:
        if path is not None and not Path(path).expanduser().parent.is_dir():
            raise ValueError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def contrast_from_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(positive, negative, test prompts) from `--positive`/`--negative` files (both or
    neither: one alone is refused, naming the missing flag) or the built-in set."""
    if (args.positive is None) != (args.negative is None):
        given, missing = ("--positive", "--negative") if args.positive else \
            ("--negative", "--positive")
        raise ValueError(f"{given} needs {missing} too: a contrast is two prompt files (leave "
                         "both out for the built-in set)")
    pos, neg, test = contrast_prompts(args.model, args.feature)
    if args.positive:
        pos, neg = load_prompts(args.positive), load_prompts(args.negative)
    return pos, neg, test


def load_vector(path: str, hooked: HookedModel) -> SteeringVector:
    """A saved vector (.safetensors, or llama.cpp's .gguf), checked against the model."""
    vector = (SteeringVector.import_gguf(path) if path.endswith(".gguf")
              else SteeringVector.load(path))
    vector.check_compatible(hooked.hidden_size, hooked.num_layers)
    return vector


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
    """Check every option that can be checked without the model, then load it."""
    if args.vector and (args.positive or args.negative):
        raise ValueError("--vector and --positive/--negative are alternatives: give one")
    check_output_folders(args.output, plot_path(args))
    pos, neg, test = contrast_from_args(args)
    test = load_prompts(args.prompts) if args.prompts else test
    scorer, behavior = resolve_scorer(args.behavior, args.model, args.feature)
    hooked = HookedModel.from_pretrained(args.model)
    check_chat(hooked, args.chat)
    settings: dict[str, Any] = {
        "behavior": behavior, "samples": args.samples, "max_tokens": args.max_tokens,
        "temperature": args.temperature, "seed": args.seed, "chat": args.chat,
        "prompts": test}
    if args.vector:
        vector: Any = load_vector(args.vector, hooked)
        settings["vector"] = args.vector
    else:
        vector = (pos, neg)
        settings.update(positive=pos, negative=neg, method=args.method)
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
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {text!r}")
    return values


_BARE_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def layer_ints(hooked: HookedModel, spec: Optional[str | Sequence[Any]]) -> Optional[list[int]]:
    """`--layers` as block indices; None when not given (the sweep's default). A bare range
    `1-3` means `residuals_1-3`."""
    if isinstance(spec, str):
        spec = ",".join(f"residuals_{m[1]}-{m[2]}" if (m := _BARE_RANGE.match(part)) else part
                        for part in spec.split(","))
    return None if spec is None else resolve_layers(hooked, spec)
