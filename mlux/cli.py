"""The `mlux` command (also `python -m mlux`): one verb per job (`info`, `demo`, `extract`,
`generate`, the sweeps, `serve`, `explore`, collection). Every verb runs the same way
(`mlux.entry.run_verb`): a user error is one line `mlux <verb>: error: ...` and exit code 2,
Ctrl-C exit code 130, a bug keeps its traceback. `mlux` alone prints the verbs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from . import __version__, demo, serve
from .builtin import DEFAULT_MODEL
from .collect import cli as collect_cli
from .entry import Verb, run_command
from .experiments import alpha_calibration, layer_sweep, strength_sweep
from .experiments.options import add_model_argument
from .explorer import launch
from .info import model_info
from .model import HookedModel
from .sae import cli as sae_cli
from .verbs import bake, extract, generate
from .verbs import condition_search as condition_search_verb
from .verbs import search as search_verb

__all__ = ["VERBS", "main"]

EXAMPLES = """examples (offline, on the built-in model mlux-toy):
  mlux demo                                            steer it, see the effect per layer
  mlux extract --layers 2 --output happy.safetensors   a vector from the built-in contrast
  mlux generate "the" --vector happy.safetensors --alpha 2 --baseline
  mlux strength-sweep --vector happy.safetensors --strengths=-4,-2,0,2,4
  mlux layer-sweep --layers 1-4                        which layer steers best

`mlux VERB --help` shows a verb's options and their defaults."""


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_pos", nargs="?", default=None, metavar="MODEL",
                   help=f"the model, as a positional (default: {DEFAULT_MODEL}); or --model")
    add_model_argument(p, default=None, help="model directory, hub id or built-in name "
                       f"(default: {DEFAULT_MODEL}), as on every other verb")
    p.add_argument("--json", action="store_true", help="print JSON (default: a table)")


def cmd_info(args: argparse.Namespace) -> int:
    if args.model and args.model_pos and args.model != args.model_pos:
        raise ValueError(f"two models given ({args.model_pos!r} and --model {args.model!r}); "
                         "give one")
    info = model_info(HookedModel.from_pretrained(args.model or args.model_pos or DEFAULT_MODEL))
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
    for name, points in info["attention_names"].items():
        print(f"  attention_i = {name:<14} {', '.join(points)}")
    feats = info["features"]
    print(f"batching       {feats['padded_batching']}")
    print(f"streams        {feats['residual_streams']}")
    print(f"windows        {', '.join(feats['windows'])}")
    for mode, why in feats["bake"].items():
        print(f"bake {mode:<9} {why}")
    print(f"config         {info['config_name']}" + (f" ({info['config_notes']})"
                                                       if info["config_notes"] else ""))
    print("recommended layers")
    for behavior, layers in info["recommended_layers"].items():
        print(f"  {behavior:<22} {layers}")
    mem = info["memory"]
    print(f"memory         weights ~{mem['weights_bytes'] / 2**20:.1f} MiB; capture "
          f"{mem['activation_bytes_per_token_per_point']} B per token per hook point")
    return 0


VERBS: tuple[Verb, ...] = (
    Verb("info", "show a model's layers, hidden size, hook points, configs", _info_arguments,
         cmd_info),
    demo.VERB,
    extract.VERB,
    generate.VERB,
    bake.VERB,
    layer_sweep.VERB,
    alpha_calibration.VERB,
    strength_sweep.VERB,
    serve.VERB,
    launch.VERB,
    *collect_cli.VERBS,
    *sae_cli.VERBS,
    search_verb.VERB,
    condition_search_verb.VERB,
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command("mlux", VERBS, argv, description="MLX-native activation steering",
                       version=__version__, epilog=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
