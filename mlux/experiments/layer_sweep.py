"""Layer sweep: which layer does a contrastive vector steer best?

For each layer the vector is extracted once (all layers from one batched pass; or a saved
`--vector` is swept at its own layers), test prompts are steered at +alpha and -alpha, a
behaviour function scores the continuations, and the layers are ranked by effect (rate at
+alpha minus rate at -alpha) among those that stay coherent. Alpha is a fraction of the layer's
mean residual norm (`--raw` for plain multiples of the vector), so layers with very different
vector norms are compared at the same relative push. `--chat` wraps every prompt in the model's
chat template; `--method pca` extracts by PCA instead of the mean difference.

    python -m mlux.experiments.layer_sweep --alpha 0.3 --layers "5,10,15,20"
    mlux layer-sweep --alpha 0.3 --layers residuals_1-4 --chat
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import Prompt, Scorer, behavior_rates
from ..entry import Verb
from ..model import HookedModel
from .common import (
    ResultFile,
    best_by_effect,
    progress_bar,
    residual_norms,
    save_plot,
    sweep_directions,
    timed_cell,
)
from .options import (
    RESUME_NOTE,
    add_common_arguments,
    layer_ints,
    plot_path,
    sweep_inputs,
)

__all__ = ["VERB", "LayerSweepResult", "layer_sweep", "main"]


@dataclass
class LayerSweepResult:
    rows: list[dict[str, Any]]  # per layer: norm, alpha used, rates at -a/0/+a, effect, coherence
    baseline_rate: float
    best_layers: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_sweep(
    hooked: HookedModel,
    vector: Any,
    prompts: Sequence[Prompt],
    scorer: Scorer,
    *,
    layers: Optional[Sequence[int]] = None,
    alpha: float = 0.3,
    relative: bool = True,
    method: str = "mean_diff",
    chat: bool = False,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    top_k: int = 3,
    positions: str = "all",
    result: Optional[ResultFile] = None,
    progress: bool = False,
) -> LayerSweepResult:
    """Steer `prompts` at +alpha and -alpha at each layer and rank the layers by effect.

    `vector`: a contrast `(positive, negative)` extracted at `layers` (default: every layer;
    `method`, `chat`), or a `SteeringVector` / `{layer: (D,)}` (default: its layers). With
    `relative`, alpha is a fraction of the layer's mean residual norm (at the contrast prompts'
    last token, or the test prompts' for a ready vector) over the vector's norm."""
    vectors, acts = sweep_directions(hooked, vector, layers, method=method, chat=chat)
    layers = list(vectors)
    residual = residual_norms(hooked, layers, acts, prompts, chat)
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed, positions=positions, chat=chat)
    base = timed_cell(result, "baseline", lambda: behavior_rates(
        hooked, vectors, prompts, scorer, alphas=[0.0], layers=layers[:1],
        **common)[0].to_dict())
    rows = []
    for layer in progress_bar(layers, progress):
        norm = float(mx.linalg.norm(vectors[layer]).item())
        a = alpha * residual[layer] / norm if relative and norm > 0 else alpha

        def run(layer: int = layer, a: float = a, norm: float = norm) -> dict[str, Any]:
            neg, pos = behavior_rates(hooked, vectors, prompts, scorer, alphas=[-a, a],
                                      layers=[layer], **common)
            return {"layer": layer, "vector_norm": norm, "residual_norm": residual[layer],
                    "alpha": a, "rate_negative": neg.rate, "rate_positive": pos.rate,
                    "effect": pos.rate - neg.rate, "distinct_2_negative": neg.distinct_2,
                    "distinct_2_positive": pos.distinct_2, "samples": pos.samples,
                    "texts_positive": pos.texts, "texts_negative": neg.texts}

        rows.append(timed_cell(result, f"layer_{layer}", run))
    floor = 0.5 * base["distinct_2"]
    coherent = [r for r in rows if min(r["distinct_2_positive"], r["distinct_2_negative"]) >= floor]
    best = best_by_effect({r["layer"]: r["effect"] for r in coherent}, top_k)
    out = LayerSweepResult(rows, base["rate"], best)
    if result is not None:
        result.finish({"baseline_rate": out.baseline_rate, "best_layers": out.best_layers})
    return out


def plot(res: LayerSweepResult, path: Path, behavior: str) -> Path:
    layers = [r["layer"] for r in res.rows]

    def draw(ax: Any) -> None:
        ax.plot(layers, [r["rate_positive"] for r in res.rows], "o-", label="+alpha")
        ax.plot(layers, [r["rate_negative"] for r in res.rows], "s-", label="-alpha")
        ax.axhline(res.baseline_rate, color="grey", ls="--", label="unsteered")
        for b in res.best_layers[:1]:
            ax.axvline(b, color="green", alpha=0.3, lw=8, label=f"best layer {b}")
        ax.set_xlabel("layer (residuals_i)")
        ax.set_ylabel(f"behaviour rate ({behavior})")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Layer sweep: behaviour rate when steering each layer")
        ax.legend(loc="best")

    return save_plot(path, draw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "layer_sweep.json")
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--layers", default=None, help='e.g. "5,10,15,20" or "residuals_2-8"')
    p.add_argument("--raw", action="store_true", help="alpha multiplies the raw vector")
    p.add_argument("--positions", choices=("all", "generated", "prompt"), default="all",
                   help="where to steer: all (default); generated = from the prompt's last "
                        "token on (rows share one prefill of the rest); prompt = the rest")
    p.add_argument("--top-k", type=int, default=3)


def run(args: argparse.Namespace) -> int:
    inp = sweep_inputs(args)
    layers = layer_ints(inp.hooked, args.layers)
    settings = {**inp.settings, "alpha": args.alpha, "relative": not args.raw,
                "layers": layers, "positions": args.positions}
    result = ResultFile(args.output, "layer_sweep", inp.hooked, settings, fresh=args.fresh)
    if result.resumed:
        print(f"resuming: {result.resumed} finished cells in {args.output}")
    res = layer_sweep(inp.hooked, inp.vector, inp.prompts, inp.scorer, layers=layers,
                      alpha=args.alpha, relative=not args.raw, method=args.method,
                      top_k=args.top_k, positions=args.positions, result=result,
                      progress=True, **inp.common)
    print(f"unsteered rate of {inp.behavior}: {res.baseline_rate:.0%}")
    print("layer | norm   | alpha  | -alpha | +alpha | effect")
    for r in res.rows:
        print(f"{r['layer']:>5} | {r['vector_norm']:6.2f} | {r['alpha']:6.2f} | "
              f"{r['rate_negative']:6.0%} | {r['rate_positive']:6.0%} | {r['effect']:+.0%}")
    print(f"best layers: {res.best_layers}; wrote {args.output} and "
          f"{plot(res, plot_path(args), inp.behavior)}")
    return 0


VERB = Verb("layer-sweep", "rank layers by how well a vector steers there", add_arguments, run,
            description=__doc__, on_interrupt=RESUME_NOTE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return VERB.main(argv, prog="python -m mlux.experiments.layer_sweep")


if __name__ == "__main__":
    sys.exit(main())
