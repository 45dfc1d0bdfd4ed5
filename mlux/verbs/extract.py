"""`mlux extract`: contrast prompts (two files, one prompt per line, or a built-in set) -> a
steering vector file, every requested layer from one batched pass.

    mlux extract --output happy.safetensors                 # the built-in model's sentiment set
    mlux extract --positive pos.txt --negative neg.txt --layers 10-14 --method pca \\
        --model mlx-community/gemma-2-2b-it-4bit --chat --output refusal.safetensors
    mlux extract --feature formality --output formal.gguf    # llama.cpp control vector

The file keeps the model id, method, prompt counts and per-layer norms; `mlux generate
--vector` and the sweeps' `--vector` read it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..entry import Verb
from ..experiments.options import (
    add_contrast_arguments,
    check_chat,
    check_output_folders,
    contrast_from_args,
    layer_ints,
)
from ..extract import extract_steering_vectors
from ..model import HookedModel

__all__ = ["VERB"]

SUFFIXES = (".safetensors", ".gguf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="vector file to write: .safetensors (mlux) or .gguf (llama.cpp "
                        "control vector); its folder must exist (no default: required)")
    add_contrast_arguments(p)
    p.add_argument("--layers", default=None, help='layers to extract at, e.g. "2", "1-4", '
                   '"residuals_10-14" or "all" (default: every layer)')


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(SUFFIXES)}, got {args.output!r}")
    check_output_folders(out)
    pos, neg, _ = contrast_from_args(args)
    hooked = HookedModel.from_pretrained(args.model)
    check_chat(hooked, args.chat)
    layers = layer_ints(hooked, args.layers) or list(range(hooked.num_layers))
    vector = extract_steering_vectors(hooked, pos, neg, layers, method=args.method,
                                      chat=args.chat)
    path = vector.export_gguf(out) if out.suffix == ".gguf" else vector.save(out)
    source = (f"{args.positive} / {args.negative}" if args.positive else
              "the built-in contrast set" + (f" {args.feature!r}" if args.feature else ""))
    print(f"extracted a {args.method} vector of {args.model} at layers {layers} from "
          f"{len(pos)} + {len(neg)} contrast prompts ({source})")
    print("layer norms: " + ", ".join(f"{i}: {n:.3g}" for i, n in vector.norms.items()))
    print(f"wrote {path}")
    return 0


VERB = Verb("extract", "contrast prompts -> a saved steering vector (.safetensors/.gguf)",
            add_arguments, run, description=__doc__)
