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
from ..entry import Verb, run_command
from ..sae.runs import train_saes
from .analysis import analyze_layers
from .collector import collect
from .run_config import SAESection, load_config

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
    result = collect(config, progress=not args.no_progress, dry_run=args.dry_run)
    if not args.dry_run and is_main_process():
        print(f"{result.chunks_written} chunks written, {result.chunks_skipped} already done; "
              f"manifest: {result.result_dir / 'manifest.json'}")
    return 0


_SAE_FLAGS = {  # flag -> SAESection field
    "kind": "kind", "latents": "num_latents", "expansion": "expansion", "k": "k",
    "l1": "l1_coeff", "lr": "learning_rate", "batch_size": "batch_size", "epochs": "epochs",
    "max_steps": "max_steps", "position": "position", "hooks": "hook_points", "seed": "seed",
}


def cmd_train_sae(args: argparse.Namespace) -> int:
    config = _config(args)
    settings = config.sae if config is not None else SAESection()
    changes = {f: getattr(args, a) for a, f in _SAE_FLAGS.items() if getattr(args, a) is not None}
    settings = dataclasses.replace(settings, **changes)
    train_saes(_result_dir(args, config), settings, out_dir=args.out_dir,
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
    p.add_argument("--config", required=True, help="YAML config (see configs/models/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print hook points and storage/memory estimates, then stop")
    p.add_argument("--batch-size", type=int, default=None, help="override inference.batch_size")
    p.add_argument("--result-dir", default=None, help="override output.result_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_sae_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (its sae section and result_dir)")
    p.add_argument("--result-dir", default=None, help="a collection directory (manifest.json)")
    p.add_argument("--out-dir", default=None, help="default <result_dir>/sae/<position>")
    p.add_argument("--hooks", nargs="+", default=None, help="layer specs (default: all collected)")
    p.add_argument("--position", default=None, help="last | mean | all | generated")
    p.add_argument("--kind", choices=("topk", "relu"), default=None)
    p.add_argument("--latents", type=int, default=None, help="number of latents")
    p.add_argument("--expansion", type=int, default=None, help="latents = expansion * hidden")
    p.add_argument("--k", type=int, default=None, help="active latents per row (topk)")
    p.add_argument("--l1", type=float, default=None, help="L1 coefficient (relu)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--allow-partial", action="store_true",
                   help="use an interrupted collection (the counts used are reported)")
    p.add_argument("--fresh", action="store_true",
                   help="replace SAEs in --out-dir trained with other settings or data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _analyze_layers_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (its output.result_dir)")
    p.add_argument("--result-dir", default=None, help="a collection directory (manifest.json)")
    p.add_argument("--categories", nargs=2, default=None, metavar=("A", "B"))
    p.add_argument("--position", default="last", choices=("last", "mean"))
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default <result_dir>/analysis")
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
