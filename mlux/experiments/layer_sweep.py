"""Layer sweep: which layer does a contrastive vector steer best?

For each layer the vector is extracted once (all layers from one batched pass; or a saved
`--vector` is swept at its own layers), test prompts are steered at +alpha and -alpha, a
behaviour function scores the continuations, and the layers are ranked by effect (rate at
+alpha minus rate at -alpha) among those that stay coherent: distinct-2 at least half the
unsteered text's, and perplexity under the unsteered model (which sees word salad) at most 4x
the unsteered text's. Rates are printed with n and a Wilson 95% interval. Alpha is a fraction
of the layer's mean residual norm (`--raw` for plain multiples of the vector), so layers with
very different vector norms are compared at the same relative push. `--chat` wraps every prompt
in the model's chat template; `--method pca` extracts by PCA instead of the mean difference.

    python -m mlux.experiments.layer_sweep --alpha 0.3 --layers "5,10,15,20"
    mlux layer-sweep --alpha 0.3 --layers 1-4 --chat
    mlux layer-sweep --behavior myscorer:is_polite     # myscorer.py in the current folder
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import Prompt, Scorer, behavior_rates
from ..entry import Verb, int_in
from ..model import HookedModel
from .common import (
    PERPLEXITY_RATIO,
    ResultFile,
    best_by_effect,
    finish_axes,
    progress_bar,
    rate_text,
    require_rates,
    residual_norms,
    save_plot,
    steered_perplexity,
    sweep_directions,
    timed_cell,
    warn_if_few_labelled,
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
    baseline: dict[str, Any] = field(default_factory=dict)  # the unsteered cell, perplexity too

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
    last token, or the test prompts' for a ready vector) over the vector's norm. Coherence is
    distinct-2 and the perplexity of the text under the unsteered model; a layer whose text
    falls below half the baseline's distinct-2 or above `PERPLEXITY_RATIO` times its
    perplexity is not ranked, nor is one whose effect could not be measured (NaN)."""
    vectors, acts = sweep_directions(hooked, vector, layers, method=method, chat=chat)
    layers = list(vectors)
    residual = residual_norms(hooked, layers, acts, prompts, chat)
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed, positions=positions, chat=chat,
                  keep_tokens=True)

    def measured(cell: Any) -> dict[str, Any]:
        ppl = steered_perplexity(hooked, prompts, cell.token_ids, samples_per_prompt, chat)
        return {**cell.to_dict(), "token_ids": [], "perplexity": ppl}

    base = timed_cell(result, "baseline", lambda: measured(behavior_rates(
        hooked, vectors, prompts, scorer, alphas=[0.0], layers=layers[:1], **common)[0]))
    rows = []
    for layer in progress_bar(layers, progress):
        norm = float(mx.linalg.norm(vectors[layer]).item())
        a = alpha * residual[layer] / norm if relative and norm > 0 else alpha

        def run(layer: int = layer, a: float = a, norm: float = norm) -> dict[str, Any]:
            neg, pos = (measured(c) for c in behavior_rates(
                hooked, vectors, prompts, scorer, alphas=[-a, a], layers=[layer], **common))
            return {"layer": layer, "vector_norm": norm, "residual_norm": residual[layer],
                    "alpha": a, "rate_negative": neg["rate"], "rate_positive": pos["rate"],
                    "effect": pos["rate"] - neg["rate"], "distinct_2_negative": neg["distinct_2"],
                    "distinct_2_positive": pos["distinct_2"],
                    "perplexity_negative": neg["perplexity"],
                    "perplexity_positive": pos["perplexity"], "samples": pos["samples"],
                    "labelled_negative": neg["labelled"], "labelled_positive": pos["labelled"],
                    "texts_positive": pos["texts"], "texts_negative": neg["texts"]}

        rows.append(timed_cell(result, f"layer_{layer}", run))
    coherent = [r for r in rows if _coherent(r, base)]
    best = best_by_effect({r["layer"]: r["effect"] for r in coherent}, top_k)
    out = LayerSweepResult(rows, base["rate"], best, base)
    if result is not None:
        result.finish({"baseline_rate": out.baseline_rate, "best_layers": out.best_layers})
    return out


def _ppl(cell: dict[str, Any], key: str) -> float:
    """A stored perplexity: null is a diverged one (JSON has no inf), a missing key (a result
    from before perplexity was measured) NaN, which excludes nothing."""
    value = cell.get(key, float("nan"))
    return float("inf") if value is None else value


def _coherent(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Both steered sides keep half the baseline's distinct-2 and stay within
    `PERPLEXITY_RATIO` times its perplexity."""
    floor = 0.5 * base["distinct_2"]
    ceiling = PERPLEXITY_RATIO * _ppl(base, "perplexity")
    return (min(row["distinct_2_positive"], row["distinct_2_negative"]) >= floor
            and not any(_ppl(row, f"perplexity_{side}") > ceiling
                        for side in ("negative", "positive")))


def plot(res: LayerSweepResult, path: Path, behavior: str) -> Path:
    layers = [r["layer"] for r in res.rows]

    def draw(ax: Any) -> None:
        ax.plot(layers, [r["rate_positive"] for r in res.rows], "o-", label="+alpha")
        ax.plot(layers, [r["rate_negative"] for r in res.rows], "s-", label="-alpha")
        ax.axhline(res.baseline_rate, color="grey", ls="--", label="unsteered")
        for b in res.best_layers[:1]:
            ax.axvline(b, color="green", alpha=0.3, lw=8, label=f"best layer {b}")
        bad = [r["layer"] for r in res.rows if not _coherent(r, res.baseline)]
        for k, layer in enumerate(bad):
            ax.axvspan(layer - 0.4, layer + 0.4, color="grey", alpha=0.2,
                       label=None if k else "incoherent (not ranked)")
        ax.set_xlabel("layer (residuals_i)")
        ax.set_ylabel(f"behaviour rate ({behavior})")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Layer sweep: behaviour rate when steering each layer")
        finish_axes(ax, integer_x=True)

    return save_plot(path, draw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "layer_sweep.json")
    p.add_argument("--alpha", type=float, default=0.3, help="steering strength, as a fraction "
                   "of the layer's mean residual norm (with --raw: a multiple of the vector)")
    p.add_argument("--layers", default=None, help='layers to sweep, e.g. "5,10,15,20", "2-8" '
                   'or "residuals_2-8" (default: every layer; with --vector: its layers)')
    p.add_argument("--raw", action="store_true", help="alpha multiplies the raw vector "
                   "(default: relative to the residual norm)")
    p.add_argument("--positions", choices=("all", "generated", "prompt"), default="all",
                   help="where to steer: all (default); generated = from the prompt's last "
                        "token on (rows share one prefill of the rest); prompt = the rest")
    p.add_argument("--top-k", type=int_in(1), default=3, help="how many best layers to name")


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
    print_table(res, inp.behavior)
    require_rates([r[k] for r in res.rows for k in ("rate_negative", "rate_positive")],
                  inp.behavior)
    warn_if_few_labelled([(res.baseline["labelled"], res.baseline["samples"])] + [
        (r[f"labelled_{side}"], r["samples"]) for r in res.rows
        for side in ("negative", "positive")], inp.behavior)
    best = (f"best layers: {res.best_layers}" if res.best_layers else
            "no layer both moved the rate measurably and stayed coherent: no best layer")
    print(f"{best}; wrote {args.output} and {plot(res, plot_path(args), inp.behavior)}")
    return 0


def print_table(res: LayerSweepResult, behavior: str) -> None:
    """Rates with n and Wilson 95% intervals; coherence as perplexity under the unsteered
    model (ppl) next to the unsteered text's."""
    base = res.baseline
    print(f"unsteered rate of {behavior}: {rate_text(base['rate'], base['labelled'])}; "
          f"unsteered ppl {_ppl(base, 'perplexity'):.3g}")
    print(f"layer | norm   | alpha  | {'-alpha':<22} | {'+alpha':<22} | effect | ppl -a / +a")
    for r in res.rows:
        ppl = " / ".join(f"{_ppl(r, f'perplexity_{s}'):.3g}" for s in ("negative", "positive"))
        mark = "" if _coherent(r, base) else "  (incoherent: not ranked)"
        print(f"{r['layer']:>5} | {r['vector_norm']:6.2f} | {r['alpha']:6.2f} | "
              f"{rate_text(r['rate_negative'], r['labelled_negative']):<22} | "
              f"{rate_text(r['rate_positive'], r['labelled_positive']):<22} | "
              f"{r['effect']:+6.0%} | {ppl}{mark}")


VERB = Verb("layer-sweep", "rank layers by how well a vector steers there", add_arguments, run,
            description=__doc__, on_interrupt=RESUME_NOTE)

main = VERB.alias("mlux.experiments.layer_sweep")


if __name__ == "__main__":
    sys.exit(main())
