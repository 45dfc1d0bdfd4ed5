"""Strength sweep and best-layer search, with the controls a result needs to be trusted.

`strength_sweep` steers test prompts with one vector at several strengths and reports the
behaviour rate (with n and a Wilson 95% interval), coherence and samples per strength, next to
a random direction of equal norm (does *this* direction matter, or does any push of that
size?). Each strength is one cell of the JSON result, saved as it finishes: Ctrl-C keeps the
finished ones and the same command resumes. `--instruction` adds the prompting baseline (the
behaviour asked for in words), shown beside the sweep. `find_best_layers` extracts every
layer, sweeps each and ranks them.

    python -m mlux.experiments.strength_sweep --layer 3 --strengths=-8,-4,0,4,8
    mlux strength-sweep --vector happy.safetensors --strengths=-4,-2,0,2,4
    mlux strength-sweep --instruction "Answer cheerfully:"

Strengths that start with '-' need '=' (--strengths=-4,-2), or argparse takes them for options.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

import mlx.core as mx

from ..behavior import Prompt, Scorer, behavior_rates
from ..entry import Verb
from ..model import HookedModel
from .common import (
    ResultFile,
    best_by_effect,
    finish_axes,
    is_contrast,
    progress_bar,
    rate_interval,
    rate_text,
    require_rates,
    save_plot,
    sweep_directions,
    timed_cell,
    warn_if_few_labelled,
)
from .options import (
    RESUME_NOTE,
    add_common_arguments,
    layer_ints,
    parse_floats,
    plot_path,
    sweep_inputs,
)

__all__ = ["VERB", "find_best_layers", "main", "prompting_baseline", "random_like",
           "strength_sweep"]

STRENGTHS = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)


def random_like(vectors: dict[int, mx.array], seed: int = 0) -> dict[int, mx.array]:
    """Random directions with the same norm per layer: the control for 'any push this big'."""
    out = {}
    for k, (layer, v) in enumerate(vectors.items()):
        r = mx.random.normal(v.shape, key=mx.random.key(seed + k))
        out[layer] = r * (mx.linalg.norm(v) / mx.linalg.norm(r))
    return out


def strength_sweep(
    hooked: HookedModel,
    vector: Any,
    prompts: Sequence[Prompt],
    scorer: Scorer,
    *,
    strengths: Sequence[float] = STRENGTHS,
    layers: Optional[Sequence[int]] = None,
    method: str = "mean_diff",
    chat: bool = False,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    control: bool = True,
    result: Optional[ResultFile] = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One dict per strength: `behavior_rate` (of `labelled` samples out of `n`), `coherence`,
    `samples` and, with `control`, `control_rate` for a random direction of equal norm. Every
    layer of the vector is steered together. `vector`: a `SteeringVector` / `{layer: (D,)}`
    (narrowed to `layers`), a `(D,)` array (at each of `layers`), or a contrast `(positive,
    negative)` extracted at `layers` (default: the model config's first recommended layer) by
    `method`. With `result`, each strength is a cell `strength_<s>` saved as it finishes (a
    rerun skips it); `progress` shows a bar."""
    if layers is None and is_contrast(vector):
        layers = hooked.config.get_recommended_layers("default")[:1]
    vectors = sweep_directions(hooked, vector, layers, method=method, chat=chat)[0]
    randoms = random_like(vectors, seed) if control else None
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed, chat=chat, layers=[tuple(vectors)])

    def one(s: float) -> dict[str, Any]:
        cell = behavior_rates(hooked, vectors, prompts, scorer, alphas=[s], **common)[0]
        row = {"strength": float(s), "behavior_rate": cell.rate,
               "coherence": {"distinct_2": cell.distinct_2, "repetition_3": cell.repetition_3},
               "samples": cell.texts, "labelled": cell.labelled, "n": cell.samples}
        if randoms is not None:  # strength 0 steers nothing: its control is itself
            ctrl = cell if s == 0 else behavior_rates(hooked, randoms, prompts, scorer,
                                                      alphas=[s], **common)[0]
            row.update(control_rate=ctrl.rate, control_labelled=ctrl.labelled,
                       control_coherence={"distinct_2": ctrl.distinct_2})
        return row

    return [timed_cell(result, f"strength_{float(s):g}", lambda s=s: one(s))
            for s in progress_bar(list(strengths), progress, "strengths", "strength")]


def prompting_baseline(hooked: HookedModel, prompts: Sequence[str], scorer: Scorer, *,
                       instruction: str, **common: Any) -> dict[str, Any]:
    """The behaviour asked for in words (`instruction` + prompt), no steering."""
    asked = [f"{instruction} {p}" for p in prompts]
    cell = behavior_rates(hooked, {0: mx.zeros((hooked.hidden_size,))}, asked, scorer,
                          alphas=[0.0], **common)[0]
    return {"instruction": instruction, "behavior_rate": cell.rate, "labelled": cell.labelled,
            "n": cell.samples, "samples": cell.texts}


def find_best_layers(
    hooked: HookedModel,
    vector: Any,
    prompts: Sequence[Prompt],
    scorer: Scorer,
    *,
    layers: Optional[Sequence[int]] = None,
    strengths: Sequence[float] = (-4.0, 0.0, 4.0),
    top_k: int = 3,
    method: str = "mean_diff",
    chat: bool = False,
    **sweep_kwargs: Any,
) -> dict[str, Any]:
    """Sweep each layer of `vector` (a contrast is extracted at every layer, or `layers`, in one
    pass) and rank the layers by the spread of behaviour rate between the strongest negative
    and positive strengths."""
    vectors = sweep_directions(hooked, vector, layers, method=method, chat=chat)[0]
    per_layer = {}
    for layer, direction in vectors.items():
        rows = strength_sweep(hooked, {layer: direction}, prompts, scorer, strengths=strengths,
                              chat=chat, control=False, **sweep_kwargs)
        rates = [r["behavior_rate"] for r in rows]
        per_layer[layer] = {"sweep": rows, "effect": rates[-1] - rates[0],
                            "vector_norm": float(mx.linalg.norm(direction).item())}
    best = best_by_effect({i: p["effect"] for i, p in per_layer.items()}, top_k)
    return {"best_layers": best, "per_layer": per_layer, "vectors": vectors}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "strength_sweep.json")
    p.add_argument("--layers", "--layer", dest="layers", default=None,
                   help='layers to steer, e.g. "2", "1-3" or "residuals_2,residuals_4", as on '
                   "the other verbs (default: the model config's first recommended layer; with "
                   "--vector: its layers)")
    p.add_argument("--strengths", default=",".join(f"{s:g}" for s in STRENGTHS),
                   help="comma-separated alphas; start negative ones with '=' "
                   "(--strengths=-4,-2,0,2,4)")
    p.add_argument("--instruction", default=None, help="also run the prompting baseline: this "
                   "text before each prompt, unsteered (default: none)")


def run(args: argparse.Namespace) -> int:
    strengths = parse_floats(args.strengths, "--strengths")
    inp = sweep_inputs(args)
    layers = (layer_ints(inp.hooked, args.layers) if args.layers is not None
              else None if args.vector
              else inp.hooked.config.get_recommended_layers("default")[:1])
    settings = {**inp.settings, "layers": layers, "strengths": strengths,
                "instruction": args.instruction}
    result = ResultFile(args.output, "strength_sweep", inp.hooked, settings, fresh=args.fresh)
    if result.resumed:
        print(f"resuming: {result.resumed} finished cells in {args.output}")
    rows = strength_sweep(inp.hooked, inp.vector, inp.prompts, inp.scorer, strengths=strengths,
                          layers=layers, method=args.method, result=result, progress=True,
                          **inp.common)
    asked = None
    if args.instruction:
        asked = timed_cell(result, "prompting_baseline", lambda: prompting_baseline(
            inp.hooked, inp.prompts, inp.scorer, instruction=args.instruction, **inp.common))
    result.finish({"rates": {f"{r['strength']:g}": r["behavior_rate"] for r in rows},
                   "control_rates": {f"{r['strength']:g}": r["control_rate"] for r in rows},
                   "prompting_baseline_rate": asked["behavior_rate"] if asked else None})
    print(f"behaviour: {inp.behavior}; rates with a Wilson 95% interval over n labelled samples")
    print(f"strength | {'rate':<22} | {'random-direction control':<24} | distinct-2")
    for r in rows:
        print(f"{r['strength']:>8g} | {rate_text(r['behavior_rate'], r['labelled']):<22} | "
              f"{rate_text(r['control_rate'], r.get('control_labelled', 0)):<24} | "
              f"{r['coherence']['distinct_2']:.2f}")
    if asked:
        print(f"prompting baseline ({asked['instruction']!r} before each prompt, unsteered): "
              f"{rate_text(asked['behavior_rate'], asked.get('labelled', 0))}")
    require_rates([r["behavior_rate"] for r in rows], inp.behavior)
    warn_if_few_labelled([(r["labelled"], r["n"]) for r in rows if "n" in r], inp.behavior)
    where = f"layers {layers or sorted(inp.vector)}"
    print(f"wrote {args.output} and {plot(rows, asked, plot_path(args), inp.behavior, where)}")
    return 0


def plot(rows: list[dict[str, Any]], asked: Optional[dict[str, Any]], path: Any,
         behavior: str, where: str) -> Any:
    """Rate per strength for the vector and its random control, the prompting baseline as a
    line when there is one."""

    def draw(ax: Any) -> None:
        xs = [r["strength"] for r in rows]
        ax.plot(xs, [r["behavior_rate"] for r in rows], "o-", label="steering vector")
        bands = [rate_interval(r["behavior_rate"], r["labelled"]) for r in rows]
        ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], alpha=0.15,
                        label="95% interval (Wilson)")
        ax.plot(xs, [r["control_rate"] for r in rows], "x--", label="random direction, same norm")
        if asked:
            ax.axhline(asked["behavior_rate"], color="purple", ls=":",
                       label=f"prompting baseline ({asked['behavior_rate']:.0%})")
        ax.set_xticks(xs)
        ax.set_xlabel(f"strength (alpha) at {where}")
        ax.set_ylabel(f"behaviour rate ({behavior})")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Strength sweep")
        finish_axes(ax)

    return save_plot(path, draw)


VERB = Verb("strength-sweep", "behaviour rate per strength, with controls", add_arguments, run,
            description=__doc__, on_interrupt=RESUME_NOTE)

main = VERB.alias("mlux.experiments.strength_sweep")


if __name__ == "__main__":
    sys.exit(main())
