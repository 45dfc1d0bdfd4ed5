"""Alpha calibration: how hard can each layer be pushed before the output degenerates?

Per layer: the vector's norm, then a geometric sweep of alpha. At each alpha the steered
continuations are measured for repetition, distinct-2 collapse, non-finite activations,
perplexity under the *unsteered* model and KL of the next-token distribution from the
baseline. The first alpha that trips a threshold is the degeneration point; the one before is
`max_safe_alpha`; each layer's starting range is [0.25, 0.5] x its own max safe alpha. Across
layers `max_safe_alpha ~= c / norm`, and `c` (with its spread) gives a first guess for layers
not calibrated. A layer that never degenerated within the grid has a lower
bound only (its max safe alpha is the grid's end), and so has `c` when no layer degenerated.
The plot shows the perplexity ratio to the unsteered text (the metric that usually trips) and
marks each layer's degeneration point with what tripped.

    mkdir -p results && mlux calibrate --output results/alpha_calibration.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import Prompt, Scorer, behavior_rates, prompt_ids
from ..entry import Verb
from ..evaluation import kl_divergence
from ..generate import prefill_with_cache
from ..model import HookedModel
from ..steering import create_steering_hook
from .common import (
    PERPLEXITY_RATIO,
    ResultFile,
    finish_axes,
    progress_bar,
    residual_norms,
    save_plot,
    steered_perplexity,
    sweep_directions,
    timed_cell,
)
from .options import (
    RESUME_NOTE,
    add_common_arguments,
    layer_ints,
    parse_floats,
    plot_path,
    sweep_inputs,
)

__all__ = ["THRESHOLDS", "VERB", "CalibrationResult", "alpha_calibration", "main",
           "start_ranges"]

# A cell degenerates when any of these trips (relative to the unsteered baseline).
THRESHOLDS = {"distinct_2_ratio": 0.6, "repetition_3": 0.5,
              "perplexity_ratio": PERPLEXITY_RATIO, "kl": 4.0}


@dataclass
class CalibrationResult:
    layers: list[dict[str, Any]]
    baseline: dict[str, float]
    c: float  # median of max_safe_alpha * norm
    c_spread: dict[str, float]
    recommended: dict[int, list[float]]  # layer -> [low, high] starting alpha range
    lower_bound: bool = False  # no layer degenerated within the grid: c is only a lower bound

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _measure(hooked: HookedModel, vectors: dict, prompts: Sequence[Prompt],
             scorer: Optional[Scorer], layer: int, alpha: float,
             common: dict[str, Any]) -> dict[str, Any]:
    cell = behavior_rates(hooked, vectors, prompts, scorer, alphas=[alpha], layers=[layer],
                          keep_tokens=True, **common)[0]
    kl, finite = [], True
    for prompt in prompts:
        ids = prompt_ids(hooked, prompt, common["chat"])
        hook = {f"residuals_{layer}": create_steering_hook(vectors[layer], alpha)}
        _, base = prefill_with_cache(hooked, ids)
        _, steered = prefill_with_cache(hooked, ids, hooks=hook)
        finite = finite and bool(mx.all(mx.isfinite(steered)).item())
        kl.append(kl_divergence(base, steered) if finite else float("inf"))
    ppl = steered_perplexity(hooked, prompts, cell.token_ids, common["samples_per_prompt"],
                             common["chat"])
    return {"alpha": alpha, "distinct_2": cell.distinct_2, "repetition_3": cell.repetition_3,
            "perplexity": ppl, "kl": sum(kl) / len(kl), "finite": finite,
            "texts": cell.texts[:2], "rate": cell.rate}


def _inf(value: Optional[float]) -> float:
    """A stored measure: null is an infinite one (strict JSON has no inf; a resumed run)."""
    return float("inf") if value is None else value


def _degenerate(m: dict[str, Any], base: dict[str, float]) -> list[str]:
    why = []
    if not m["finite"]:
        why.append("non-finite activations")
    if m["distinct_2"] < THRESHOLDS["distinct_2_ratio"] * base["distinct_2"]:
        why.append("distinct-2 collapse")
    if m["repetition_3"] > max(THRESHOLDS["repetition_3"], 2 * base["repetition_3"]):
        why.append("repetition")
    if _inf(m["perplexity"]) > THRESHOLDS["perplexity_ratio"] * _inf(base["perplexity"]):
        why.append("perplexity")
    if _inf(m["kl"]) > THRESHOLDS["kl"]:
        why.append("KL from baseline")
    return why


def alpha_calibration(
    hooked: HookedModel,
    vector: Any,
    prompts: Sequence[Prompt],
    scorer: Optional[Scorer] = None,
    *,
    layers: Optional[Sequence[int]] = None,
    alphas: Optional[Sequence[float]] = None,
    method: str = "mean_diff",
    chat: bool = False,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    result: Optional[ResultFile] = None,
    progress: bool = False,
) -> CalibrationResult:
    """Find each layer's degeneration point. `vector`: a contrast `(positive, negative)`
    extracted at `layers` (default: every layer; `method`, `chat`), or a `SteeringVector` /
    `{layer: (D,)}` (default: its layers). `alphas` default to a geometric grid of pushes from
    0.05 to 20 times the layer's mean residual norm (as multiples of each layer's own vector).
    `scorer` (optional) adds the behaviour `rate` to every cell, to see how far the behaviour
    has moved before the text breaks."""
    vectors, acts = sweep_directions(hooked, vector, layers, method=method, chat=chat)
    layers = list(vectors)
    residual = residual_norms(hooked, layers, acts, prompts, chat)
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed, chat=chat)

    def cell(key: str, layer: int, alpha: float) -> dict[str, Any]:
        return timed_cell(result, key, lambda: _measure(hooked, vectors, prompts, scorer,
                                                        layer, alpha, common))

    base = cell("baseline", layers[0], 0.0)
    rows = []
    for layer in progress_bar(layers, progress):
        norm = float(mx.linalg.norm(vectors[layer]).item())
        grid = alphas or [residual[layer] / norm * 0.05 * (400 ** (k / 9)) for k in range(10)]
        sweep = [cell(f"layer_{layer}_alpha_{a:.6g}", layer, a) for a in grid]
        for m in sweep:
            m["degenerate"] = _degenerate(m, base)
        first = next((i for i, m in enumerate(sweep) if m["degenerate"]), None)
        safe = grid[-1] if first is None else (grid[first - 1] if first > 0 else 0.0)
        rows.append({"layer": layer, "vector_norm": norm, "residual_norm": residual[layer],
                     "sweep": sweep, "degenerates_at": None if first is None else grid[first],
                     "max_safe_alpha": safe, "c": safe * norm})
    cs = [r["c"] for r in rows if r["c"] > 0]
    c = statistics.median(cs) if cs else 0.0
    spread = {"min": min(cs, default=0.0), "max": max(cs, default=0.0),
              "std": statistics.pstdev(cs) if len(cs) > 1 else 0.0}
    rec = start_ranges(rows)
    lower = all(r["degenerates_at"] is None for r in rows)
    out = CalibrationResult(rows, {k: base[k] for k in ("distinct_2", "repetition_3",
                                                        "perplexity")}, c, spread, rec, lower)
    if result is not None:
        result.finish({"c": c, "c_spread": spread, "recommended": rec, "lower_bound": lower,
                       "max_safe_alpha": {r["layer"]: r["max_safe_alpha"] for r in rows}})
    return out


def start_ranges(rows: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """Each layer's starting alpha range, [0.25, 0.5] x that layer's own max safe alpha: never
    above what that layer stood (the median c / norm can be, for a layer that breaks early)."""
    return {r["layer"]: [0.25 * r["max_safe_alpha"], 0.5 * r["max_safe_alpha"]] for r in rows}


def _ratio(m: dict[str, Any], base: dict[str, float], cap: float = 1e3) -> float:
    """Perplexity relative to the unsteered text's, capped so a diverged cell stays on the plot."""
    ppl, ref = _inf(m["perplexity"]), _inf(base["perplexity"])
    if ppl != ppl or not ref or ref != ref or ref == float("inf"):
        return float("nan")
    return min(ppl / ref, cap)


def plot(res: CalibrationResult, path: Any) -> Any:
    """Perplexity ratio against the push per layer, the threshold, each layer's degeneration
    point (an X, labelled with what tripped) and c (marked as a lower bound when it is one)."""

    def draw(ax: Any) -> None:
        for r in res.layers:
            cells = [m for m in r["sweep"] if m["alpha"] > 0]
            xs = [m["alpha"] * r["vector_norm"] for m in cells]
            line, = ax.plot(xs, [_ratio(m, res.baseline) for m in cells], "o-", ms=4,
                            label=f"layer {r['layer']}")
            hit = next((m for m in cells if m["degenerate"]), None)
            if hit is not None:
                ax.plot(hit["alpha"] * r["vector_norm"], _ratio(hit, res.baseline), "X",
                        ms=12, color=line.get_color(), markeredgecolor="black",
                        label=f"layer {r['layer']} degenerates: {', '.join(hit['degenerate'])}")
        ax.axhline(THRESHOLDS["perplexity_ratio"], color="grey", ls=":",
                   label=f"perplexity threshold ({THRESHOLDS['perplexity_ratio']:g}x)")
        if res.c > 0:
            ax.axvline(res.c, color="red", ls="--", label=(
                f"c >= {res.c:.3g} (lower bound: nothing degenerated)" if res.lower_bound
                else f"c = {res.c:.3g}"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("push |alpha * vector| (residual-stream units)")
        ax.set_ylabel("perplexity of steered text / unsteered\n(under the unsteered model)")
        ax.set_title("Alpha calibration: where each layer's text degenerates")
        finish_axes(ax)

    return save_plot(path, draw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "alpha_calibration.json")
    p.add_argument("--layers", default=None, help='layers to calibrate, e.g. "1-3" or "2,4" '
                   "(default: every layer; with --vector: its layers)")
    p.add_argument("--alphas", default=None, help="comma-separated alphas; start negative ones "
                   "with '=' (--alphas=-1,1) (default: a geometric grid from 0.05 to 20 times "
                   "each layer's residual norm)")


def run(args: argparse.Namespace) -> int:
    alphas = parse_floats(args.alphas, "--alphas") if args.alphas else None
    inp = sweep_inputs(args)
    layers = layer_ints(inp.hooked, args.layers)
    settings = {**inp.settings, "layers": layers, "alphas": alphas, "thresholds": THRESHOLDS}
    result = ResultFile(args.output, "alpha_calibration", inp.hooked, settings, fresh=args.fresh)
    res = alpha_calibration(inp.hooked, inp.vector, inp.prompts, inp.scorer, layers=layers,
                            alphas=alphas, method=args.method, result=result, progress=True,
                            **inp.common)
    print_table(res)
    print(f"wrote {args.output} and {plot(res, plot_path(args))}")
    return 0


def print_table(res: CalibrationResult) -> None:
    """Per layer: where it degenerated and why, its max safe alpha and starting range; `>=`
    marks a lower bound (the layer never degenerated within the alphas tried)."""
    print("layer | norm   | degenerates at (what tripped)        | max safe alpha | c        "
          "| start range (alpha)")
    for r in res.layers:
        hit = next((m for m in r["sweep"] if m["degenerate"]), None)
        ge = "" if hit else ">="
        deg = (f"{hit['alpha']:.3g} ({', '.join(hit['degenerate'])})" if hit
               else f"never, up to {r['sweep'][-1]['alpha']:.3g}")
        low, high = res.recommended[r["layer"]]
        print(f"{r['layer']:>5} | {r['vector_norm']:6.2f} | {deg:<36} | "
              f"{ge + format(r['max_safe_alpha'], '.3g'):>14} | "
              f"{ge + format(r['c'], '.3g'):<8} | {low:.3g} - {high:.3g}")
    spread = f"min {res.c_spread['min']:.3g}, max {res.c_spread['max']:.3g}"
    if res.lower_bound:
        print(f"c >= {res.c:.3g} ({spread}) is a lower bound: no layer degenerated within the "
              "alphas tried, so the real limits are higher; extend --alphas to find them. "
              "The start ranges are safe but may be timid.")
    else:
        print(f"c = {res.c:.3g} ({spread}): a first guess for other layers, alpha ~ c / norm; "
              "each layer above starts at [0.25, 0.5] x its own max safe alpha.")


VERB = Verb("calibrate", "find where each layer's output degenerates", add_arguments, run,
            description=__doc__, on_interrupt=RESUME_NOTE)

main = VERB.alias("mlux.experiments.alpha_calibration")


if __name__ == "__main__":
    sys.exit(main())
