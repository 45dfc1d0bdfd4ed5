"""`mlux condition-search`: where does a condition vector separate two prompt sets? F1 of the
gate over layer x threshold x comparator (CAST's find_best_condition_point), as JSON and a
heat-map PNG; the best cell can be saved as a condition file for `mlux generate --condition`.

    mlux condition-search --feature formality --output formal_search.json \\
        --save-condition formal.safetensors          # the built-in model's formality contrast
    mlux condition-search --positive legal.txt --negative other.txt --layers 4-12 \\
        --model mlx-community/gemma-2-2b-it-4bit --chat --thresholds=0,0.02,0.04,0.06
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..condition_search import ConditionSearch, find_condition_point
from ..conditions import COMPARATORS, SUMMARIES
from ..entry import Verb
from ..experiments.common import save_plot
from ..experiments.options import (
    add_contrast_arguments,
    check_chat,
    check_output_folders,
    contrast_from_args,
    layer_ints,
    load_vector,
    parse_floats,
    plot_path,
)
from ..model import HookedModel

__all__ = ["VERB", "plot_search"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_contrast_arguments(p)
    p.add_argument("--vector", metavar="FILE", help="condition vectors (.safetensors/.gguf) "
                   "with every searched layer (default: extracted from the contrast)")
    p.add_argument("--layers", default=None, help='layers to search, e.g. "1-4" '
                   "(default: every layer)")
    p.add_argument("--thresholds", default=None, help="comma-separated cosine thresholds "
                   "(default: 41 spread over the observed similarities)")
    p.add_argument("--comparators", default=",".join(COMPARATORS),
                   help="comma-separated: larger fires above the threshold, smaller below")
    p.add_argument("--summary", choices=SUMMARIES, default="mean",
                   help="the prompt's state: mean over its tokens, or its last token")
    p.add_argument("--output", default="condition_search.json", help="JSON result")
    p.add_argument("--plot", default=None, help="heat-map PNG (default: next to --output)")
    p.add_argument("--save-condition", metavar="FILE", default=None,
                   help="write the best cell as a condition file (.safetensors)")


def plot_search(result: ConditionSearch, path: Path) -> Path:
    """A heat map of F1: one row per (comparator, layer), one column per threshold; the best
    cell is starred."""
    rows = [(c, layer) for c in result.comparators for layer in result.layers]
    grid = np.array([result.f1[c][i] for c in result.comparators
                     for i in range(len(result.layers))])  # (rows, thresholds)
    best, thresholds = result.best, result.thresholds

    def draw(ax: Any) -> None:
        image = ax.imshow(grid, aspect="auto", origin="lower", vmin=0.0, vmax=1.0,
                          cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(rows)), [f"{c} L{layer}" for c, layer in rows],
                      fontsize="small")
        ticks = list(range(0, len(thresholds), max(1, len(thresholds) // 8)))
        ax.set_xticks(ticks, [f"{thresholds[j]:.3g}" for j in ticks], fontsize="small")
        ax.set_xlabel("threshold (cosine similarity with the condition vector)")
        ax.set_title(f"condition F1 ({result.summary} of the prompt); best {result.best_f1:.3f} "
                     f"at layer {best.layer}, {best.comparator} {best.threshold:.3g}",
                     fontsize="small")
        ax.plot([thresholds.index(best.threshold)], [rows.index((best.comparator, best.layer))],
                marker="*", color="red", markersize=12, linestyle="none")
        ax.figure.colorbar(image, ax=ax, label="F1")

    return save_plot(path, draw)


def run(args: argparse.Namespace) -> int:
    if args.save_condition and not args.save_condition.endswith(".safetensors"):
        raise ValueError(f"--save-condition must end in .safetensors, got "
                         f"{args.save_condition!r}")
    comparators = [c.strip() for c in args.comparators.split(",") if c.strip()]
    bad = [c for c in comparators if c not in COMPARATORS]
    if bad or not comparators:
        raise ValueError(f"--comparators: unknown {bad[0] if bad else 'empty list'!r}; valid: "
                         f"{', '.join(COMPARATORS)}")
    thresholds = parse_floats(args.thresholds, "--thresholds") if args.thresholds else None
    check_output_folders(args.output, args.plot, args.save_condition)
    pos, neg, _ = contrast_from_args(args)
    hooked = HookedModel.from_pretrained(args.model)
    check_chat(hooked, args.chat)
    layers = layer_ints(hooked, args.layers)
    vector = load_vector(args.vector, hooked) if args.vector else None
    result = find_condition_point(hooked, pos, neg, layers, thresholds, comparators,
                                  vector=vector, summary=args.summary, method=args.method,
                                  chat=args.chat)
    result.save(args.output)
    png = plot_search(result, plot_path(args))
    b = result.best
    print(f"best cell: layer {b.layer}, {b.comparator} than {b.threshold:.4g} ({b.summary} "
          f"of the prompt): F1 {result.best_f1:.3f} on {len(pos)} + {len(neg)} prompts")
    print(f"wrote {args.output} and {png}")
    if args.save_condition:
        print(f"wrote {b.save(args.save_condition)}")
    return 0


VERB = Verb("condition-search", "F1 of a condition over layer x threshold x comparator "
            "(JSON + heat map)", add_arguments, run, description=__doc__)
