"""`mlux search`: find the layer, strength and window of a steering vector (or the weights of
a directional ablation) with optuna's TPE, scoring behaviour and damage together.

    mlux search --trials 40 --seed 0                       # built-in model, sentiment, steer
    mlux search --mode ablate --trials 40 --seed 0         # pull "mood: happy" to the base rate
    mlux search --trials 40 --seed 0 --pick best --max-kl 0.05
    mlux generate "the" --vector search-out/picked.safetensors --positions all

Behaviour: the sweeps' `--behavior` (toy:FEATURE=VALUE | refusal | contains:w1,w2 |
module:function) on sampled continuations of `--prompts`, or with `--score logodds` the
log-odds of the behaviour's tokens at the last prompt position (no generation). Damage: the
first-token KL from the unsteered model on `--harmless` prompts. The study lives in `--out`:
Ctrl-C and the same command continue it; other settings are refused, naming what changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from ..builtin import BUILTIN_MODELS
from ..entry import Verb, int_in
from ..experiments.options import (
    add_contrast_arguments,
    check_chat,
    check_output_folders,
    contrast_from_args,
    float_at_least,
    load_prompts,
    load_vector,
    parse_floats,
    resolve_scorer,
)
from ..model import HookedModel
from ..search import MODES, WINDOWS, SearchSpace, behavior_words, search
from ..search.report import front_table, plot_front
from ..search.result import SearchResult, Trial
from ..toy import MARKER_PREFIX, TEST_PROMPTS
from .extract import SUFFIXES

__all__ = ["VERB"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_contrast_arguments(p)
    p.add_argument("--vector", metavar="FILE", help="a saved vector (.safetensors/.gguf) "
                   "instead of the contrast (default: extract one at every layer)")
    p.add_argument("--mode", default="steer", help=f"{' | '.join(MODES)}: steer raises the "
                   "behaviour, ablate projects the direction out to remove it")
    p.add_argument("--trials", type=int, default=40, help="trials in the finished study")
    p.add_argument("--seed", type=int_in(0), default=0, help="sampler and sampling seed")
    p.add_argument("--prompts", metavar="FILE", help="prompts the behaviour is measured on "
                   "(default: the contrast's test prompts; ablate on the built-in model: "
                   "them after the 'mood: happy' marker)")
    p.add_argument("--harmless", metavar="FILE", help="neutral prompts the KL is measured on "
                   "(default: the contrast's test prompts)")
    p.add_argument("--avoid", metavar="FILE", help="steer: prompts where the behaviour must "
                   "not appear; its rate there is a third objective (default: none)")
    p.add_argument("--behavior", help="toy:FEATURE=VALUE | refusal | contains:w1,w2 | "
                   "module:function (default: the feature's first value)")
    p.add_argument("--score", choices=("sampled", "logodds"), default="sampled",
                   help="behaviour from sampled text, or the generation-free log-odds of its "
                        "tokens at the last prompt position")
    p.add_argument("--target-words", help="comma-separated words whose tokens the log-odds "
                   "score counts (default: from --behavior)")
    p.add_argument("--samples", type=int_in(1), default=2, help="samples per prompt per trial")
    p.add_argument("--max-tokens", type=int_in(1), default=24, help="tokens per sample")
    p.add_argument("--temperature", type=float_at_least(0.0), default=1.0,
                   help="sampling temperature (0 = greedy)")
    p.add_argument("--layers", help='span of the centre layer, e.g. "1-4" (default: all but '
                   "the last fifth)")
    p.add_argument("--strengths", default="0,1", help="steer: strength range low,high as a "
                   "fraction of the layer's residual norm")
    p.add_argument("--windows", default=",".join(WINDOWS), help="windows to try")
    p.add_argument("--kernel", action="store_true", help="also search a per-layer profile "
                   "(distance, min weight) around the centre layer")
    p.add_argument("--batch", type=int_in(1), default=4, help="trials decoded as one batch")
    p.add_argument("--out", default="search-out", help="folder of the study and its results")
    p.add_argument("--fresh", action="store_true", help="start over, dropping a study in --out")
    p.add_argument("--pick", help='write a trial as a vector file: "best" or a trial number '
                   "(on a terminal without --pick you are asked)")
    p.add_argument("--max-kl", type=float_at_least(0.0), default=None,
                   help="with --pick best: the best behaviour at KL <= this")
    p.add_argument("--save", metavar="FILE", help="where --pick writes: .safetensors (mlux) "
                   "or .gguf (llama.cpp control vector) (default: OUT/picked.safetensors)")


def _span(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        values = (float(low), float(high if sep else low))
    except ValueError as e:
        raise ValueError(f"--layers must be a range like 1-4, got {text!r}") from e
    return values


def _prompts(args: argparse.Namespace, test: list[str], feature_target: str) -> list[str]:
    """--prompts, else the test prompts; ablating a toy feature on the built-in model: them
    after the feature's marker, whose pull the ablation should remove."""
    if args.prompts:
        return load_prompts(args.prompts)
    feature, _, value = feature_target.partition("=")
    if args.mode == "ablate" and args.model in BUILTIN_MODELS and feature in MARKER_PREFIX:
        marker = f"{MARKER_PREFIX[feature]} {value}"
        return [marker] + [f"{marker} {p}" for p in TEST_PROMPTS if not p.startswith("<")]
    return test


def _token_words(args: argparse.Namespace, behavior: str) -> tuple[list[str], list[str]]:
    """The log-odds score's (target, against) words: --target-words, else the behaviour's."""
    if args.score != "logodds":
        return [], []
    if args.target_words:
        return [w.strip() for w in args.target_words.split(",") if w.strip()], []
    words = behavior_words(behavior)
    if words is None:
        raise ValueError(f"--score logodds needs the behaviour's words: {behavior} has no "
                         "token set, pass --target-words w1,w2")
    return words


def _choose(res: SearchResult, args: argparse.Namespace) -> Optional[Trial]:
    pick = args.pick
    if pick is None and sys.stdin.isatty() and sys.stdout.isatty():
        try:
            pick = input("trial to save as a vector (a number, 'best', Enter: none): ").strip()
        except EOFError:  # Ctrl-D: no choice
            pick = ""
    if not pick:
        return None
    if pick == "best":
        return res.best(args.max_kl)
    try:
        return res.trial(int(pick))
    except ValueError as e:
        raise ValueError(f"--pick must be 'best' or a trial number, got {pick!r} ({e})") from e


def run(args: argparse.Namespace) -> int:
    if args.trials <= 0:
        raise ValueError(f"--trials must be a positive integer, got {args.trials}")
    if args.mode not in MODES:
        raise ValueError(f"unknown --mode {args.mode!r}; choose from {', '.join(MODES)}")
    if args.vector and (args.positive or args.negative):
        raise ValueError("--vector and --positive/--negative are alternatives: give one")
    if args.pick is not None and args.pick != "best" and not args.pick.isdigit():
        raise ValueError(f"--pick must be 'best' or a trial number, got {args.pick!r}")
    if args.save and Path(args.save).suffix not in SUFFIXES:
        raise ValueError(f"--save must end in {' or '.join(SUFFIXES)}, got {args.save!r}")
    check_output_folders(args.save)
    strengths = parse_floats(args.strengths, "--strengths")
    if len(strengths) > 2:
        raise ValueError(f"--strengths is a range low,high, got {args.strengths!r}")
    space = SearchSpace(_span(args.layers) if args.layers else None,
                        (strengths[0], strengths[-1]),
                        tuple(w.strip() for w in args.windows.split(",") if w.strip()),
                        args.kernel)
    pos, neg, test = contrast_from_args(args)
    scorer, behavior = resolve_scorer(args.behavior, args.model, args.feature)
    prompts = _prompts(args, test, behavior[4:] if behavior.startswith("toy:") else "")
    harmless = load_prompts(args.harmless) if args.harmless else test
    target, against = _token_words(args, behavior)
    hooked = HookedModel.from_pretrained(args.model)
    check_chat(hooked, args.chat)
    vector: Any = load_vector(args.vector, hooked) if args.vector else (pos, neg)
    res = search(hooked, vector, prompts, scorer, harmless=harmless, trials=args.trials,
                 mode=args.mode, seed=args.seed, out=args.out, space=space, behavior=behavior,
                 score=args.score, target=target, against=against, samples=args.samples,
                 max_tokens=args.max_tokens, temperature=args.temperature, batch=args.batch,
                 chat=args.chat, avoid=load_prompts(args.avoid) if args.avoid else (),
                 fresh=args.fresh, progress=True)
    chosen = _choose(res, args) if args.pick else None
    print(front_table(res, chosen))
    chosen = chosen or _choose(res, args)  # on a terminal without --pick: asked here
    png = plot_front(res, Path(args.out) / "search.png", chosen)
    print(f"wrote {Path(args.out) / 'search.json'} and {png}")
    if chosen is not None:
        path = Path(args.save) if args.save else Path(args.out) / "picked.safetensors"
        vec = res.to_vector(chosen)
        path = vec.export_gguf(path) if path.suffix == ".gguf" else vec.save(path)
        window = chosen.params["window"]
        use = (f"mlux generate PROMPT --vector {path} --positions {window}" if args.mode ==
               "steer" else f"mlux bake --model {args.model} --ablate {path} --out DIR")
        print(f"saved trial {chosen.number} to {path}; use it: {use}")
        if args.mode == "ablate" and window != "all":
            print(f"note: mlux bake --ablate bakes a trial's per-layer weights exactly, but "
                  f"only for the window 'all' (this trial's is {window!r}): baked weights act "
                  "at every position")
    return 0


VERB = Verb("search", "search layer, strength and window (or an ablation) for behaviour vs "
            "damage", add_arguments, run, description=__doc__,
            on_interrupt="finished trials are saved; rerun the same command to continue")
