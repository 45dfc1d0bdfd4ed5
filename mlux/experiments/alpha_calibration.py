"""Alpha calibration: how hard can each layer be pushed before the output degenerates?

Per layer: the vector's norm, then a geometric sweep of alpha. At each alpha the steered
continuations are measured for repetition, distinct-2 collapse, non-finite activations,
perplexity under the *unsteered* model and KL of the next-token distribution from the
baseline. The first alpha that trips a threshold is the degeneration point; the one before is
`max_safe_alpha`. Across layers `max_safe_alpha ~= c / norm`, and `c` (with its spread) gives
a starting range for any layer.

    python -m mlux.experiments.alpha_calibration --output results.json
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
from ..evaluation import kl_divergence, perplexity
from ..generate import prefill_with_cache
from ..model import HookedModel
from ..steering import create_steering_hook
from .common import (
    ResultFile,
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
    parse_floats,
    plot_path,
    sweep_inputs,
)

__all__ = ["THRESHOLDS", "VERB", "CalibrationResult", "alpha_calibration", "main"]

# A cell degenerates when any of these trips (relative to the unsteered baseline).
THRESHOLDS = {"distinct_2_ratio": 0.6, "repetition_3": 0.5, "perplexity_ratio": 4.0,
              "kl": 4.0}


@dataclass
class CalibrationResult:
    layers: list[dict[str, Any]]
    baseline: dict[str, float]
    c: float  # median of max_safe_alpha * norm
    c_spread: dict[str, float]
    recommended: dict[int, list[float]]  # layer -> [low, high] starting alpha range

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _measure(hooked: HookedModel, vectors: dict, prompts: Sequence[Prompt],
             scorer: Optional[Scorer], layer: int, alpha: float,
             common: dict[str, Any]) -> dict[str, Any]:
    cell = behavior_rates(hooked, vectors, prompts, scorer, alphas=[alpha], layers=[layer],
                          keep_tokens=True, **common)[0]
    ppl, kl, finite = [], [], True
    per = common["samples_per_prompt"]
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(hooked, prompt, common["chat"])
        for toks in cell.token_ids[i * per : (i + 1) * per]:
            ppl.append(perplexity(hooked, ids, toks))
        hook = {f"residuals_{layer}": create_steering_hook(vectors[layer], alpha)}
        _, base = prefill_with_cache(hooked, ids)
        _, steered = prefill_with_cache(hooked, ids, hooks=hook)
        finite = finite and bool(mx.all(mx.isfinite(steered)).item())
        kl.append(kl_divergence(base, steered) if finite else float("inf"))
    good = [p for p in ppl if p == p and p != float("inf")]
    return {"alpha": alpha, "distinct_2": cell.distinct_2, "repetition_3": cell.repetition_3,
            "perplexity": statistics.median(good) if good else float("inf"),
            "kl": statistics.mean(kl), "finite": finite, "texts": cell.texts[:2],
            "rate": cell.rate}


def _degenerate(m: dict[str, Any], base: dict[str, float]) -> list[str]:
    why = []
    if not m["finite"]:
        why.append("non-finite activations")
    if m["distinct_2"] < THRESHOLDS["distinct_2_ratio"] * base["distinct_2"]:
        why.append("distinct-2 collapse")
    if m["repetition_3"] > max(THRESHOLDS["repetition_3"], 2 * base["repetition_3"]):
        why.append("repetition")
    if m["perplexity"] > THRESHOLDS["perplexity_ratio"] * base["perplexity"]:
        why.append("perplexity")
    if m["kl"] > THRESHOLDS["kl"]:
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
    rec = {r["layer"]: [0.25 * c / r["vector_norm"], 0.5 * c / r["vector_norm"]] for r in rows}
    out = CalibrationResult(rows, {k: base[k] for k in ("distinct_2", "repetition_3",
                                                        "perplexity")}, c, spread, rec)
    if result is not None:
        result.finish({"c": c, "c_spread": spread, "recommended": rec,
                       "max_safe_alpha": {r["layer"]: r["max_safe_alpha"] for r in rows}})
    return out


def plot(res: CalibrationResult, path: Any) -> Any:
    def draw(ax: Any) -> None:
        for r in res.layers:
            xs = [m["alpha"] * r["vector_norm"] for m in r["sweep"]]
            ax.plot(xs, [m["distinct_2"] for m in r["sweep"]], "o-", label=f"layer {r['layer']}")
        ax.axvline(res.c, color="red", ls="--", label=f"c = {res.c:.1f}")
        ax.set_xscale("log")
        ax.set_xlabel("push |alpha * vector| (residual-stream units)")
        ax.set_ylabel("distinct-2 of steered text")
        ax.set_title("Alpha calibration: coherence against steering strength")
        ax.legend(loc="best", fontsize="small")

    return save_plot(path, draw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "alpha_calibration.json")
    p.add_argument("--layers", default=None, help="layers to calibrate (default: all)")
    p.add_argument("--alphas", default=None, help="comma-separated alphas (default: auto grid)")


def run(args: argparse.Namespace) -> int:
    inp = sweep_inputs(args)
    layers = layer_ints(inp.hooked, args.layers)
    alphas = parse_floats(args.alphas, "--alphas") if args.alphas else None
    settings = {**inp.settings, "layers": layers, "alphas": alphas, "thresholds": THRESHOLDS}
    result = ResultFile(args.output, "alpha_calibration", inp.hooked, settings, fresh=args.fresh)
    res = alpha_calibration(inp.hooked, inp.vector, inp.prompts, inp.scorer, layers=layers,
                            alphas=alphas, method=args.method, result=result, progress=True,
                            **inp.common)
    print("layer | norm   | degenerates at | max safe alpha | c")
    for r in res.layers:
        deg = "-" if r["degenerates_at"] is None else f"{r['degenerates_at']:.3g}"
        print(f"{r['layer']:>5} | {r['vector_norm']:6.2f} | {deg:>14} | "
              f"{r['max_safe_alpha']:14.3g} | {r['c']:.3g}")
    print(f"c = {res.c:.3g} (min {res.c_spread['min']:.3g}, max {res.c_spread['max']:.3g}); "
          f"start at alpha in [0.25, 0.5] * c / norm. Wrote {args.output} and "
          f"{plot(res, plot_path(args))}")
    return 0


VERB = Verb("calibrate", "find where each layer's output degenerates", add_arguments, run,
            description=__doc__, on_interrupt=RESUME_NOTE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return VERB.main(argv, prog="python -m mlux.experiments.alpha_calibration")


if __name__ == "__main__":
    sys.exit(main())
