"""Verbs `collect`, `train-sae` and `analyze-layers` of the `mlux` command.

`VERBS` lists them for `mlux.cli`; `python -m mlux.collect.cli ...` runs them on their own
through `main(argv)`, the same way (`mlux.entry`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..distributed import is_main_process
from ..entry import Verb, int_in, run_command
from ..sae.runs import train_saes
from .analysis import analyze_layers
from .collector import collect
from .manifest import Manifest
from .run_config import POSITIONS, SAE_KINDS, SAESection, load_config

__all__ = ["VERBS", "cmd_analyze_layers", "cmd_collect", "cmd_train_sae", "main", "register"]


def _config(args: argparse.Namespace) -> Any:
    return load_config(args.config) if getattr(args, "config", None) else None


def _result_dir(args: argparse.Namespace, config: Any) -> Path:
    if args.result_dir:
        return Path(args.result_dir)
    if config is None:
        raise ValueError("give --config (its output.result_dir is used) or --result-dir")
    return Path(config.output.result_dir).expanduser()


def cmd_collect(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.batch_size is not None:
        config = config.replace("inference", batch_size=args.batch_size)
    if args.result_dir is not None:
        config = config.replace("output", result_dir=args.result_dir)
    result = collect(config, progress=not args.no_progress, dry_run=args.dry_run,
                     force=args.force)
    if not args.dry_run and is_main_process():
        print(f"{result.chunks_written} chunks written, {result.chunks_skipped} already done; "
              f"manifest: {result.result_dir / 'manifest.json'}")
    return 0


_SAE_FLAGS: dict[str, tuple[str, dict[str, Any], str]] = {  # flag -> field, argparse, help
    "hooks": ("hook_points", {"nargs": "+"}, "layer specs to train on"),
    "position": ("position", {"choices": POSITIONS}, "which collected position"),
    "kind": ("kind", {"choices": SAE_KINDS}, "topk or relu (+ L1)"),
    "latents": ("num_latents", {"type": int_in(1)}, "number of latents"),
    "expansion": ("expansion", {"type": int_in(1)}, "latents = expansion x hidden size"),
    "k": ("k", {"type": int_in(1)}, "active latents per row, topk"),
    "l1": ("l1_coeff", {"type": float}, "L1 coefficient, relu"),
    "lr": ("learning_rate", {"type": float}, "Adam learning rate"),
    "batch_size": ("batch_size", {"type": int_in(1)}, "rows per optimizer step"),
    "epochs": ("epochs", {"type": int_in(1)}, "passes over the data"),
    "max_steps": ("max_steps", {"type": int_in(1)}, "stop after this many steps"),
    "seed": ("seed", {"type": int_in(0)}, "initialisation and shuffle seed"),
}


def cmd_train_sae(args: argparse.Namespace) -> int:
    config = _config(args)
    result_dir = _result_dir(args, config)
    # the same settings as train_saes(result_dir): the config's sae section, else the one the
    # collection was made with
    settings = config.sae if config is not None else Manifest.load(result_dir).sae_settings()
    changes = {f: getattr(args, a) for a, (f, _, _) in _SAE_FLAGS.items()
               if getattr(args, a) is not None}
    settings = dataclasses.replace(settings, **changes)
    train_saes(result_dir, settings, out_dir=args.out_dir,
               allow_partial=args.allow_partial, fresh=args.fresh, progress=not args.no_progress)
    return 0


def cmd_analyze_layers(args: argparse.Namespace) -> int:
    report = analyze_layers(_result_dir(args, _config(args)), categories=args.categories,
                            position=args.position, test_fraction=args.test_fraction,
                            seed=args.seed, out_dir=args.out_dir,
                            allow_partial=args.allow_partial)
    print(f"best separation at {report['best_hook']}; wrote {report['paths']['json']} and "
          f"{report['paths']['plot']}")
    return 0


def _collect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/models/); "
                   "required")
    p.add_argument("--dry-run", action="store_true",
                   help="print hook points and storage/memory estimates, then stop")
    p.add_argument("--batch-size", type=int_in(1), default=None,
                   help="override inference.batch_size (default: the config's, else 8)")
    p.add_argument("--result-dir", default=None,
                   help="override output.result_dir (default: the config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="collect into a non-empty folder that holds no mlux manifest")


def _source_arguments(p: argparse.ArgumentParser, config_use: str, out_use: str,
                      out_default: str) -> None:
    """`--config`, `--result-dir`, `--out-dir`: which collection a verb reads, where it writes."""
    p.add_argument("--config", default=None, help=f"YAML config: {config_use} (default: none; "
                   "then --result-dir is needed)")
    p.add_argument("--result-dir", default=None, help="a collection directory (manifest.json) "
                   "(default: the config's output.result_dir)")
    p.add_argument("--out-dir", default=None, help=f"{out_use} (default: {out_default})")


def _sae_default(name: str) -> str:
    """Help text's default for a `train-sae` flag: the `sae:` value of the config (or of the
    collection's own config), else the built-in one."""
    value = getattr(SAESection(), name)
    shown = {"num_latents": "expansion x hidden size", "max_steps": "no limit",
             "hook_points": "every collected hook point"}.get(name, value)
    return f"(default: sae.{name} of the config, or of the collection, else {shown})"


def _train_sae_arguments(p: argparse.ArgumentParser) -> None:
    _source_arguments(p, "its sae section and output.result_dir", "where SAEs go",
                      "<result_dir>/sae/<position>")
    for flag, (name, kwargs, what) in _SAE_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", default=None, **kwargs,
                       help=f"{what} {_sae_default(name)}")
    p.add_argument("--allow-partial", action="store_true",
                   help="use an interrupted collection (the counts used are reported)")
    p.add_argument("--fresh", action="store_true",
                   help="replace SAEs in --out-dir trained with other settings or data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _analyze_layers_arguments(p: argparse.ArgumentParser) -> None:
    _source_arguments(p, "its output.result_dir", "where the report goes",
                      "<result_dir>/analysis")
    p.add_argument("--categories", nargs=2, default=None, metavar=("A", "B"),
                   help="the two categories to separate (default: the collection's two, when "
                   "it has exactly two)")
    p.add_argument("--position", default="last", choices=("last", "mean"),
                   help="which collected position to probe")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of each category held out to test the probe")
    p.add_argument("--seed", type=int_in(0), default=0, help="train/test split seed")
    p.add_argument("--allow-partial", action="store_true",
                   help="use an interrupted collection (the counts used are written)")


VERBS = (
    Verb("collect", "collect activations over a data set into resumable safetensors shards, as "
         "a YAML config describes", _collect_arguments, cmd_collect,
         on_interrupt="finished chunks are kept; rerun the same command to resume"),
    Verb("train-sae", "train one sparse autoencoder per collected hook point",
         _train_sae_arguments, cmd_train_sae),
    Verb("analyze-layers", "per-layer separability of two collected categories (JSON + plot)",
         _analyze_layers_arguments, cmd_analyze_layers),
)


def register(subparsers: Any) -> None:
    """Add `collect`, `train-sae` and `analyze-layers` to an argparse subparsers object."""
    for verb in VERBS:
        verb.register(subparsers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command("python -m mlux.collect.cli", VERBS, argv,
                       description="activation collection and SAEs")


if __name__ == "__main__":
    sys.exit(main())
