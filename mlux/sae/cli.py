"""Verbs `features` and `sae-eval` of the `mlux` command (`train-sae` is with collection,
`mlux.collect.cli`).

    mlux features "mood: happy the" --sae results/collect/mlux-toy/sae/all/residuals_3
    mlux features "the" --sae DIR --max-tokens 8 --clamp 17=12    # generate with feature 17 at 12
    mlux sae-eval --sae DIR --prompts configs/data/toy_prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from mlux.builtin import DEFAULT_MODEL
from mlux.collect.data import read_prompts
from mlux.collect.store import ActivationStore
from mlux.entry import Verb, int_in
from mlux.model import HookedModel

from .metrics import evaluate_sae, spliced_metrics
from .model import SparseAutoencoder
from .reading import read_features

__all__ = ["FEATURES", "SAE_EVAL", "VERBS"]


def _model_and_sae(args: argparse.Namespace) -> tuple[HookedModel, SparseAutoencoder]:
    sae = SparseAutoencoder.load(args.sae)  # a bad file fails before the model loads
    hooked = HookedModel.from_pretrained(args.model or sae.config.model_name or DEFAULT_MODEL)
    sae.check_model(hooked.hidden_size, hooked.num_layers)
    return hooked, sae


def _clamp(text: Optional[str]) -> Optional[tuple[int, float]]:
    if text is None:
        return None
    feature, sep, value = text.partition("=")
    try:
        return int(feature), float(value)
    except ValueError:
        raise ValueError(f"--clamp must be FEATURE=VALUE such as 17=12.5, got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, metavar="DIR", help="a SAELens folder (cfg.json + "
                   "sae_weights.safetensors, e.g. from mlux train-sae) or a Gemma Scope "
                   "params.npz")
    p.add_argument("--model", default=None, help="model directory, hub id or built-in name "
                   "(default: the SAE's model_name, else the built-in mlux-toy)")


def _features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the text whose tokens' features to show")
    _common(p)
    p.add_argument("--k", type=int_in(1), default=5, help="features shown per token")
    p.add_argument("--max-tokens", type=int_in(0, 4096), default=0,
                   help="also generate this many tokens (greedy) and show theirs")
    p.add_argument("--clamp", default=None, metavar="FEATURE=VALUE",
                   help="generate and read with this feature clamped (error term kept)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--json", action="store_true", help="print JSON (default: a table)")


def cmd_features(args: argparse.Namespace) -> int:
    clamp = _clamp(args.clamp)
    hooked, sae = _model_and_sae(args)
    rows = read_features(hooked, sae, args.prompt, k=args.k, max_tokens=args.max_tokens,
                         clamp=clamp, chat=args.chat)
    if args.json:
        print(json.dumps({"hook": sae.config.hook, "tokens": [r.to_json() for r in rows]},
                         indent=2))
        return 0
    print(f"top {args.k} features per token at {sae.config.hook} ({sae.config.architecture}, "
          f"{sae.config.d_sae} features)" + (f", feature {clamp[0]} clamped to {clamp[1]:g}"
                                             if clamp else ""))
    for r in rows:
        feats = "  ".join(f"{f}:{a:.2f}" for f, a in r.features) or "(none active)"
        print(f"{'+' if r.generated else ' '} {r.text!r:<14} {feats}")
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts for the spliced CE/KL (.jsonl/.csv with a text field, or a "
                   "folder of .txt files)")
    p.add_argument("--limit", type=int_in(1), default=64, help="prompts used at most")
    p.add_argument("--shards", nargs="*", default=None, metavar="FILE",
                   help="activation shards for FVE/L0/dead latents (e.g. from mlux collect)")
    p.add_argument("--json", action="store_true", help="print JSON (default: a table)")


def cmd_sae_eval(args: argparse.Namespace) -> int:
    hooked, sae = _model_and_sae(args)
    prompts = [p for group in read_prompts(Path(args.prompts)).values() for p in group]
    metrics = spliced_metrics(hooked, sae, prompts[:args.limit])
    if args.shards:
        store = ActivationStore([Path(s) for s in args.shards])
        metrics = {**evaluate_sae(sae, store), **metrics}
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for key, value in metrics.items():
        print(f"{key:<24} {value:.6g}" if isinstance(value, float) else f"{key:<24} {value}")
    return 0


FEATURES = Verb("features", "the top SAE features of each token of a prompt (and of its "
                "continuation, optionally with a feature clamped)", _features_arguments,
                cmd_features)
SAE_EVAL = Verb("sae-eval", "SAE quality as SAELens reports it: CE-loss recovered and KL with "
                "the SAE spliced in (and FVE, L0, dead latents on shards)", _eval_arguments,
                cmd_sae_eval)
VERBS = (FEATURES, SAE_EVAL)
