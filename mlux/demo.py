"""`mlux demo`: extract a vector, show baseline vs steered text, and a per-layer effect table.

On the built-in model it steers a feature the model was trained on; with `--model` it uses a
small happy/sad contrast set on any mlx-lm model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional

from .behavior import behavior_rates
from .builtin import DEFAULT_MODEL
from .contrastive import ContrastiveSteering
from .contrasts import contrast_task
from .entry import Verb, int_in
from .extract import extract_steering_vectors
from .model import HookedModel

__all__ = ["VERB", "blas_note", "run_demo"]

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def blas_note(platform: str = sys.platform, maps: str = "/proc/self/maps") -> Optional[str]:
    """On Linux, a note when OpenBLAS is not loaded: MLX's CPU wheel then runs fp32 matmuls on
    its bundled reference BLAS, ~20x slower. None when it is loaded, or off Linux."""
    if not platform.startswith("linux"):
        return None
    try:  # the system OpenBLAS (numpy's bundled libscipy_openblas does not serve MLX)
        with open(maps) as f:
            text = f.read().lower()
    except OSError:
        text = os.environ.get("LD_PRELOAD", "").lower()
    loaded = "libopenblas" in text or "/openblas-" in text
    if loaded:
        return None
    return ("note: OpenBLAS is not preloaded, so MLX's CPU matmuls use a slow reference BLAS "
            "(~20x slower in fp32): apt-get install -y libopenblas0-pthread and run with "
            f"LD_PRELOAD={OPENBLAS}")


def run_demo(model: str = DEFAULT_MODEL, feature: Optional[str] = None, max_tokens: int = 24,
             seed: int = 0, samples: int = 4, print_fn: Callable[[str], None] = print) -> int:
    t0 = time.perf_counter()
    hooked = HookedModel.from_pretrained(model)
    task = contrast_task(model, feature)
    q = hooked.quantization
    precision = f"{q['bits']}-bit" if q else str(hooked.dtype).replace("mlx.core.", "")
    print_fn(f"mlux demo: steering {task.feature!r} on {model} ({hooked.model_type}, "
             f"{hooked.num_layers} layers, hidden {hooked.hidden_size}, {precision})")
    note = blas_note()
    if note:
        print_fn(note)
    t1 = time.perf_counter()
    vectors = extract_steering_vectors(hooked, task.positive, task.negative, "all")
    print_fn(f"extracted a vector at every layer from {len(task.positive)} + "
             f"{len(task.negative)} contrast prompts in one batched pass "
             f"({time.perf_counter() - t1:.2f} s)\n")
    layer = task.layer if task.layer is not None else \
        hooked.config.get_recommended_layers("default")[0]
    prompt = task.prompts[0]
    steer = ContrastiveSteering(hooked, task.positive, task.negative, layer, positions="all")
    print_fn(f"prompt {prompt!r}, layer {layer}, greedy, every alpha a row of one batch:")
    texts = steer.compare(prompt, alphas=task.alphas, max_tokens=max_tokens)
    labels = {a: "baseline" if a == 0 else f"alpha {a:+g}" for a in texts}
    width = max(map(len, labels.values()))
    for alpha, text in texts.items():
        print_fn(f"  {labels[alpha]:>{width}} | {text}")
    cells = behavior_rates(hooked, vectors, task.prompts, task.scorer, alphas=task.alphas,
                           samples_per_prompt=samples, max_tokens=max_tokens, seed=seed,
                           positions="all")
    n = len(task.prompts) * samples
    print_fn(f"\nper-layer effect: rate of {task.target!r} over {n} sampled continuations per "
             f"cell (temperature 1, seeds fixed); distinct-2 (coherence) at alpha "
             f"{task.alphas[-1]:+g}:")
    heads = [f"alpha {a:+g}" for a in task.alphas]
    header = " | ".join(heads)
    print_fn(f"  layer | norm   | {header} | distinct-2")
    by_layer: dict[int, list] = {}
    for c in cells:
        by_layer.setdefault(c.layer, []).append(c)
    for lyr, row in by_layer.items():
        norm = float((vectors[lyr] ** 2).sum().sqrt().item())
        rates = " | ".join(f"{c.rate:>{len(h)}.0%}" for c, h in zip(row, heads, strict=True))
        print_fn(f"  {lyr:>5} | {norm:6.2f} | {rates} | {row[-1].distinct_2:.2f}")
    spread = {lyr: row[-1].rate - row[0].rate for lyr, row in by_layer.items()}
    best = max(spread, key=lambda k: (spread[k], -k))
    print_fn(f"\nlargest effect at layer {best} ({spread[best]:+.0%} between "
             f"alpha {task.alphas[0]:+g} and {task.alphas[-1]:+g}); "
             f"total {time.perf_counter() - t0:.1f} s")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="any mlx-lm model: directory, hub id "
                   "or built-in name")
    p.add_argument("--feature", default=None, help="feature to steer (built-in model: "
                   "sentiment or formality, default sentiment; other models: happy/sad)")
    p.add_argument("--max-tokens", type=int_in(1), default=24, help="tokens per continuation")
    p.add_argument("--seed", type=int_in(0), default=0, help="first sampling seed of the "
                   "per-layer table")


def _run(args: argparse.Namespace) -> int:
    return run_demo(model=args.model, feature=args.feature, max_tokens=args.max_tokens,
                    seed=args.seed)


VERB = Verb("demo", "extract a vector and show steered vs baseline generations",
            _add_arguments, _run, description=__doc__)
