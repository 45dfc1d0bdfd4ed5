"""The `mlux` command: one subcommand per job (`info`, `demo`, `extract`, ...)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional, Sequence

from .builtin import DEFAULT_MODEL

__all__ = ["build_parser", "main", "run_guarded"]


def run_guarded(fn: Callable[[], int], name: str) -> int:
    """Run a command, turning expected failures into one clear line instead of a traceback."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"mlux {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlux {name}: interrupted; finished cells are saved, rerun the same command to "
              "resume", file=sys.stderr)
        return 130


def _load(model: str):  # noqa: ANN202
    from .model import HookedModel

    return HookedModel.from_pretrained(model)


def cmd_info(args: argparse.Namespace) -> int:
    from .info import model_info

    info = model_info(_load(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    q = info["quantization"]
    print(f"model          {info['model_id']}")
    print(f"architecture   {info['model_type']} (blocks at {info['blocks_path']})")
    print(f"block pattern  {info['block_pattern']}")
    print(f"layers         {info['num_layers']}")
    print(f"hidden size    {info['hidden_size']}")
    precision = f"{q['bits']}-bit, group size {q['group_size']}" if q else info["dtype"]
    print(f"precision      {precision}")
    print(f"hook points    {len(info['hook_points'])}: {', '.join(info['hook_points_compact'])}")
    print(f"config         {info['config_name']}" + (f" ({info['config_notes']})"
                                                       if info["config_notes"] else ""))
    print("recommended layers")
    for behavior, layers in info["recommended_layers"].items():
        print(f"  {behavior:<22} {layers}")
    mem = info["memory"]
    print(f"memory         weights ~{mem['weights_bytes'] / 2**20:.1f} MiB; capture "
          f"{mem['activation_bytes_per_token_per_point']} B per token per hook point")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, feature=args.feature, max_tokens=args.max_tokens,
                    seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlux", description="MLX-native activation steering")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str):  # noqa: A002
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = add("info", cmd_info, "show a model's layers, hidden size, hook points, configs")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"model directory, hub id or built-in name (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("demo", cmd_demo, "extract a vector and show steered vs baseline generations")
    p.add_argument("--model", default=DEFAULT_MODEL, help="any mlx-lm model (default: built-in)")
    p.add_argument("--feature", default=None, help="feature to steer (built-in model: "
                   "sentiment or formality; other models: happy/sad contrast)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)

    from .collect.cli import register as register_collect
    from .experiments import alpha_calibration, layer_sweep, strength_sweep
    from .experiments.steering_explorer import register as register_explore
    from .serve import register as register_serve

    for name, module, text in (
            ("layer-sweep", layer_sweep, "rank layers by how well a vector steers there"),
            ("calibrate", alpha_calibration, "find where each layer's output degenerates"),
            ("strength-sweep", strength_sweep, "behaviour rate per strength, with controls")):
        p = sub.add_parser(name, help=text, description=module.__doc__)
        module.build_parser(p)
        p.set_defaults(func=module.run_cli)
    register_serve(sub)
    register_explore(sub)
    register_collect(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), args.command)


if __name__ == "__main__":
    sys.exit(main())
