"""`mlux bake`: write a directional ablation or a steering vector into a model's weights; the
output folder is a plain mlx-lm model that runs without mlux.

    mlux bake --model M --ablate refusal.safetensors --layers 12 --out M-abliterated
    mlux bake --model mlux-toy --vector happy.safetensors --alpha 2 --out toy-happy
    mlx_lm.generate --model toy-happy --prompt "the"          # no mlux needed

Vector files are .safetensors or llama.cpp .gguf (read by the loader every verb uses).
--ablate projects one direction (the vector's at the one chosen layer; a one-layer vector
needs no --layers) out of every weight that writes into the residual stream; a vector picked by
`mlux search --mode ablate` is baked with the trial's per-layer weights from its metadata (each
block's attention and MLP outputs only, as the search hooked them; a trial whose window is not
"all" is refused); --vector adds
alpha * v at residuals_L for each chosen layer (default: all the vector's) as MLP output biases.
A bake that cannot be exact for the model (post-norm blocks, a head that cannot be untied, an
MoE block for --vector, ...) is refused with the reason; see `mlux.bake.bake_support`.
"""

from __future__ import annotations

import argparse

from ..bake import bake_ablation, bake_steering, search_weights
from ..entry import Verb
from ..experiments.options import add_model_argument, layer_ints, load_vector
from ..model import HookedModel

__all__ = ["VERB"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)  # the built-in model by default, like every other verb
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ablate", metavar="FILE", help="vector file whose direction to remove")
    mode.add_argument("--vector", metavar="FILE", help="vector file to add (needs --alpha)")
    p.add_argument("--alpha", type=float, default=None, help="strength for --vector")
    p.add_argument("--layers", default=None, help='layers of the vector to bake, e.g. "2" or '
                   '"1-3" (default: the vector\'s only layer / all its layers)')
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write (not the "
                   "source's folder, a folder inside it or one that contains it)")
    p.add_argument("--overwrite", "--force", action="store_true",
                   help="replace --out if it exists and is not empty")


def run(args: argparse.Namespace) -> int:
    if args.vector and args.alpha is None:
        raise ValueError("--vector needs --alpha (the strength to bake)")
    if args.ablate and args.alpha is not None:
        raise ValueError("--alpha goes with --vector; an ablation has no strength")
    hooked = HookedModel.from_pretrained(args.model)
    layers = layer_ints(hooked, args.layers)
    if args.ablate:
        vec = load_vector(args.ablate, hooked)
        weights = search_weights(vec)  # a picked search trial: its per-layer weights
        if weights is not None:
            shown = ", ".join(f"{i}: {w:.3g}" for i, w in weights.items()) or "none"
            print(f"{args.ablate} is search trial {vec.metadata['search'].get('trial')}: "
                  f"baking its per-layer weights from the file's metadata ({shown}) into the "
                  "blocks' attention and MLP outputs; the embeddings stay untouched, as in "
                  "the search")
        s = bake_ablation(hooked, vec, layers=layers, out=args.out, overwrite=args.overwrite,
                          layer_weights=weights)
        print(f"baked an ablation of {args.ablate} (layer {s['direction_layer']}'s direction) "
              f"into {len(s['edited'])} weight matrices of {args.model}")
        if weights is not None:
            print(f"baked logits against the original run with the trial's ablation hooks: "
                  f"relative error {s['logit_error']:.3g}" + (
                      f" (requantized; the unedited model's is {s['unedited_logit_error']:.3g})"
                      if s["requantization"] else ""))
        elif (q := s["requantization"]):
            print(f"requantized (rounding chosen to keep the direction out): worst relative "
                  f"error {q['max_relative']:.3g}, direction's component left in the stream at "
                  f"most {s['remaining_component']['max']:.3g} of the original")
    else:
        s = bake_steering(hooked, args.vector, args.alpha, layers=layers, out=args.out,
                          overwrite=args.overwrite)
        print(f"baked {args.vector} x {args.alpha:g} at layers {s['layers']} into {args.model}")
    print(f"wrote {args.out} (run it with: mlx_lm.generate --model {args.out} --prompt ...)")
    return 0


VERB = Verb("bake", "write an ablation or a steering vector into a plain mlx-lm model folder",
            add_arguments, run, description=__doc__)
