"""Layer sweep: which layer does a contrastive vector steer best?

For each layer the vector is extracted once (all layers from one batched pass), test prompts are
steered at +alpha and -alpha, a behaviour function scores the continuations, and the layers are
ranked by effect (rate at +alpha minus rate at -alpha) among those that stay coherent. Alpha is
a fraction of the layer's mean residual norm (`--raw` for plain multiples of the vector), so
layers with very different vector norms are compared at the same relative push.

    python -m mlux.experiments.layer_sweep --alpha 0.3 --layers "5,10,15,20"
    mlux layer-sweep --alpha 0.3 --layers residuals_1-4
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import Scorer, behavior_rates
from ..extract import extract_with_activations
from ..model import HookedModel
from .common import (
    ResultFile,
    add_common_arguments,
    best_by_effect,
    cli_main,
    layer_ints,
    plot_path,
    progress_bar,
    prompts_from_args,
    resolve_scorer,
    save_plot,
    timed_cell,
)

__all__ = ["LayerSweepResult", "layer_sweep", "main"]


@dataclass
class LayerSweepResult:
    rows: list[dict[str, Any]]  # per layer: norm, alpha used, rates at -a/0/+a, effect, coherence
    baseline_rate: float
    best_layers: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_sweep(
    hooked: HookedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    test_prompts: Sequence[str],
    scorer: Scorer,
    *,
    layers: Optional[Sequence[int]] = None,
    alpha: float = 0.3,
    relative: bool = True,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    top_k: int = 3,
    positions: str = "all",
    result: Optional[ResultFile] = None,
    progress: bool = False,
) -> LayerSweepResult:
    layers = list(range(hooked.num_layers)) if layers is None else list(layers)
    vectors, acts = extract_with_activations(hooked, positive, negative, layers)
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed, positions=positions)

    def cell(key: str, fn: Any) -> Any:
        return timed_cell(result, key, fn) if result is not None else fn()

    base = cell("baseline", lambda: behavior_rates(
        hooked, vectors, test_prompts, scorer, alphas=[0.0], layers=layers[:1],
        **common)[0].to_dict())
    rows = []
    bar = progress_bar(layers, progress)
    for layer in bar:
        norm = float(mx.linalg.norm(vectors[layer]).item())
        residual = float(mx.linalg.norm(acts[layer], axis=-1).mean().item())
        a = alpha * residual / norm if relative and norm > 0 else alpha

        def run(layer: int = layer, a: float = a, norm: float = norm,
                residual: float = residual) -> dict[str, Any]:
            neg, pos = behavior_rates(hooked, vectors, test_prompts, scorer, alphas=[-a, a],
                                      layers=[layer], **common)
            return {"layer": layer, "vector_norm": norm, "residual_norm": residual,
                    "alpha": a, "rate_negative": neg.rate, "rate_positive": pos.rate,
                    "effect": pos.rate - neg.rate, "distinct_2_negative": neg.distinct_2,
                    "distinct_2_positive": pos.distinct_2, "samples": pos.samples,
                    "texts_positive": pos.texts, "texts_negative": neg.texts}

        rows.append(cell(f"layer_{layer}", run))
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


def build_parser(p: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m mlux.experiments.layer_sweep",
                                     description=__doc__.splitlines()[0])
    add_common_arguments(p, "layer_sweep.json")
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--layers", default=None, help='e.g. "5,10,15,20" or "residuals_2-8"')
    p.add_argument("--raw", action="store_true", help="alpha multiplies the raw vector")
    p.add_argument("--positions", choices=("all", "generated", "prompt"), default="all",
                   help="where to steer: all (default); generated = from the prompt's last "
                        "token on (rows share one prefill of the rest); prompt = the rest")
    p.add_argument("--top-k", type=int, default=3)
    return p


def run_cli(args: argparse.Namespace) -> int:
    hooked = HookedModel.from_pretrained(args.model)
    pos, neg, test = prompts_from_args(args)
    scorer, behavior = resolve_scorer(args.behavior, args.model, args.feature)
    layers = layer_ints(hooked, args.layers)
    settings = {"alpha": args.alpha, "relative": not args.raw, "layers": layers,
                "positions": args.positions,
                "behavior": behavior, "samples": args.samples, "max_tokens": args.max_tokens,
                "temperature": args.temperature, "seed": args.seed, "positive": pos,
                "negative": neg, "prompts": test}
    result = ResultFile(args.output, "layer_sweep", hooked, settings, fresh=args.fresh)
    if result.resumed:
        print(f"resuming: {result.resumed} finished cells in {args.output}")
    res = layer_sweep(hooked, pos, neg, test, scorer, layers=layers, alpha=args.alpha,
                      relative=not args.raw, samples_per_prompt=args.samples,
                      max_tokens=args.max_tokens, temperature=args.temperature,
                      seed=args.seed, top_k=args.top_k, positions=args.positions,
                      result=result, progress=True)
    print(f"unsteered rate of {behavior}: {res.baseline_rate:.0%}")
    print("layer | norm   | alpha  | -alpha | +alpha | effect")
    for r in res.rows:
        print(f"{r['layer']:>5} | {r['vector_norm']:6.2f} | {r['alpha']:6.2f} | "
              f"{r['rate_negative']:6.0%} | {r['rate_positive']:6.0%} | {r['effect']:+.0%}")
    print(f"best layers: {res.best_layers}; wrote {args.output} and "
          f"{plot(res, plot_path(args), behavior)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(build_parser, run_cli, argv, "layer_sweep")


if __name__ == "__main__":
    sys.exit(main())
