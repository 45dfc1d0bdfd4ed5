"""Subcommands `collect`, `train-sae` and `analyze-layers` for the `mlux` CLI.

`register(subparsers)` adds them to `mlux`'s parser; `python -m mlux.collect.cli ...` runs them
on their own through `main(argv)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["cmd_analyze_layers", "cmd_collect", "cmd_train_sae", "main", "register"]


def _config(args: argparse.Namespace) -> Any:
    from .run_config import load_config

    return load_config(args.config) if getattr(args, "config", None) else None


def _result_dir(args: argparse.Namespace, config: Any) -> Path:
    if args.result_dir:
        return Path(args.result_dir)
    if config is None:
        raise ValueError("give --config (its output.result_dir is used) or --result-dir")
    return Path(config.output.result_dir).expanduser()


def cmd_collect(args: argparse.Namespace) -> int:
    from .collector import collect

    config = _config(args)
    if args.batch_size is not None:
        config = config.replace("inference", batch_size=args.batch_size)
    if args.result_dir is not None:
        config = config.replace("output", result_dir=args.result_dir)
    result = collect(config, progress=not args.no_progress, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{result.chunks_written} chunks written, {result.chunks_skipped} already done; "
              f"manifest: {result.result_dir / 'manifest.json'}")
    return 0


_SAE_FLAGS = {  # flag -> SAESection field
    "kind": "kind", "latents": "num_latents", "expansion": "expansion", "k": "k",
    "l1": "l1_coeff", "lr": "learning_rate", "batch_size": "batch_size", "epochs": "epochs",
    "max_steps": "max_steps", "position": "position", "hooks": "hook_points", "seed": "seed",
}


def cmd_train_sae(args: argparse.Namespace) -> int:
    from .run_config import SAESection
    from .sae_train import train_saes

    config = _config(args)
    settings = config.sae if config is not None else SAESection()
    changes = {f: getattr(args, a) for a, f in _SAE_FLAGS.items() if getattr(args, a) is not None}
    settings = dataclasses.replace(settings, **changes)
    train_saes(_result_dir(args, config), settings, out_dir=args.out_dir,
               progress=not args.no_progress)
    return 0


def cmd_analyze_layers(args: argparse.Namespace) -> int:
    from .analysis import analyze_layers

    report = analyze_layers(_result_dir(args, _config(args)), categories=args.categories,
                            position=args.position, test_fraction=args.test_fraction,
                            seed=args.seed, out_dir=args.out_dir)
    print(f"best separation at {report['best_hook']}; wrote {report['paths']['json']} and "
          f"{report['paths']['plot']}")
    return 0


def register(subparsers: Any) -> None:
    """Add `collect`, `train-sae` and `analyze-layers` to an argparse subparsers object."""

    def add(name: str, fn: Any, text: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=text, description=text)
        p.set_defaults(func=fn)
        return p

    p = add("collect", cmd_collect, "collect activations over a data set into resumable "
            "safetensors shards, as a YAML config describes")
    p.add_argument("--config", required=True, help="YAML config (see configs/models/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print hook points and storage/memory estimates, then stop")
    p.add_argument("--batch-size", type=int, default=None, help="override inference.batch_size")
    p.add_argument("--result-dir", default=None, help="override output.result_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("train-sae", cmd_train_sae, "train one sparse autoencoder per collected hook point")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("analyze-layers", cmd_analyze_layers,
            "per-layer separability of two collected categories (JSON + plot)")
    p.add_argument("--config", default=None, help="YAML config (its output.result_dir)")
    p.add_argument("--result-dir", default=None, help="a collection directory (manifest.json)")
    p.add_argument("--categories", nargs=2, default=None, metavar=("A", "B"))
    p.add_argument("--position", default="last", choices=("last", "mean"))
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default <result_dir>/analysis")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlux.collect.cli",
                                     description="activation collection and SAEs")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # FileNotFoundError and PermissionError are OSErrors
        print(f"mlux {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
