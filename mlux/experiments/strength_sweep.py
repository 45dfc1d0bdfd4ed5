"""Strength sweep and best-layer search, with the controls a result needs to be trusted.

`strength_sweep` steers test prompts with one vector at several strengths and reports the
behaviour rate, coherence and samples per strength, next to a random direction of equal norm
(does *this* direction matter, or does any push of that size?). `prompting_baseline` asks for
the behaviour in the prompt instead. `find_best_layers` extracts every layer, sweeps each and
ranks them.

    python -m mlux.experiments.strength_sweep --layer 3 --strengths=-8,-4,0,4,8
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx

from ..behavior import behavior_rates
from ..extract import extract_steering_vectors
from ..model import HookedModel
from ..steering import directions_at
from .common import (
    ResultFile,
    add_common_arguments,
    best_by_effect,
    cli_main,
    parse_floats,
    plot_path,
    prompts_from_args,
    resolve_scorer,
    save_plot,
    timed_cell,
)

__all__ = ["find_best_layers", "main", "prompting_baseline", "random_like", "strength_sweep"]


def _hooked(model: Any, tokenizer: Any) -> HookedModel:
    if isinstance(model, HookedModel):
        return model
    return HookedModel(model, tokenizer)


def random_like(vectors: dict[int, mx.array], seed: int = 0) -> dict[int, mx.array]:
    """Random directions with the same norm per layer: the control for 'any push this big'."""
    out = {}
    for k, (layer, v) in enumerate(vectors.items()):
        r = mx.random.normal(v.shape, key=mx.random.key(seed + k))
        out[layer] = r * (mx.linalg.norm(v) / mx.linalg.norm(r))
    return out


def strength_sweep(
    model: Any,
    tokenizer: Any,
    steering_vector: Any,
    test_prompts: Sequence[str],
    is_target_behavior_fn: Callable[[str], Optional[bool]],
    strengths: Sequence[float],
    *,
    layers: Optional[Sequence[int]] = None,
    samples_per_prompt: int = 2,
    max_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    control: bool = True,
) -> list[dict[str, Any]]:
    """One dict per strength: `behavior_rate`, `coherence`, `samples` and, with `control`,
    `control_rate` for a random direction of equal norm. `model` may be a `HookedModel`
    (then `tokenizer` may be None); a vector with several layers steers them together."""
    hooked = _hooked(model, tokenizer)
    vectors = {i: mx.array(v, dtype=mx.float32)
               for i, v in directions_at(steering_vector, layers).items()}
    common = dict(samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                  temperature=temperature, seed=seed)
    steered = _multi(hooked, vectors, test_prompts, is_target_behavior_fn, strengths, common)
    controls = (_multi(hooked, random_like(vectors, seed), test_prompts, is_target_behavior_fn,
                       strengths, common) if control else [None] * len(strengths))
    out = []
    for s, cell, ctrl in zip(strengths, steered, controls, strict=True):
        row = {"strength": float(s), "behavior_rate": cell.rate,
               "coherence": {"distinct_2": cell.distinct_2, "repetition_3": cell.repetition_3},
               "samples": cell.texts, "labelled": cell.labelled, "n": cell.samples}
        if ctrl is not None:
            row["control_rate"] = ctrl.rate
            row["control_coherence"] = {"distinct_2": ctrl.distinct_2}
        out.append(row)
    return out


def _multi(hooked: HookedModel, vectors: dict[int, mx.array], prompts: Sequence[str],
           scorer: Callable, strengths: Sequence[float], common: dict) -> list:
    """Every layer of the vector steered together, one cell per strength."""
    return behavior_rates(hooked, vectors, prompts, scorer, alphas=strengths,
                          layers=[tuple(vectors)], **common)


def prompting_baseline(hooked: HookedModel, test_prompts: Sequence[str], instruction: str,
                       scorer: Callable[[str], Optional[bool]], **common: Any) -> dict[str, Any]:
    """The behaviour asked for in words (`instruction` + prompt), no steering."""
    prompts = [f"{instruction} {p}" for p in test_prompts]
    cell = behavior_rates(hooked, {0: mx.zeros((hooked.hidden_size,))}, prompts, scorer,
                          alphas=[0.0], **common)[0]
    return {"instruction": instruction, "behavior_rate": cell.rate, "samples": cell.texts}


def find_best_layers(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    test_prompts: Sequence[str],
    is_target_behavior_fn: Callable[[str], Optional[bool]],
    *,
    layers: Optional[Sequence[int]] = None,
    strengths: Sequence[float] = (-4.0, 0.0, 4.0),
    top_k: int = 3,
    method: str = "mean_diff",
    **sweep_kwargs: Any,
) -> dict[str, Any]:
    """Extract every layer in one pass, sweep each, rank by the spread of behaviour rate
    between the strongest negative and positive strengths."""
    hooked = _hooked(model, tokenizer)
    layers = list(range(hooked.num_layers)) if layers is None else list(layers)
    vectors = extract_steering_vectors(hooked, positive, negative, layers, method=method)
    per_layer = {}
    for layer in layers:
        rows = strength_sweep(hooked, None, {layer: vectors[layer]}, test_prompts,
                              is_target_behavior_fn, strengths, control=False, **sweep_kwargs)
        rates = [r["behavior_rate"] for r in rows]
        per_layer[layer] = {"sweep": rows, "effect": rates[-1] - rates[0],
                            "vector_norm": float(mx.linalg.norm(vectors[layer]).item())}
    best = best_by_effect({i: per_layer[i]["effect"] for i in layers}, top_k)
    return {"best_layers": best, "per_layer": per_layer, "vectors": vectors}


def build_parser(p: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m mlux.experiments.strength_sweep",
                                     description=__doc__.splitlines()[0])
    add_common_arguments(p, "strength_sweep.json")
    p.add_argument("--layer", type=int, default=None, help="layer to steer (default: "
                   "the model config's first recommended layer)")
    p.add_argument("--vector", default=None, help="a saved vector (.safetensors/.gguf) "
                   "instead of contrast prompts")
    p.add_argument("--strengths", default="-8,-4,-2,0,2,4,8")
    p.add_argument("--instruction", default=None, help="also run the prompting baseline")
    return p


def run_cli(args: argparse.Namespace) -> int:
    from ..vectors import SteeringVector

    hooked = HookedModel.from_pretrained(args.model)
    pos, neg, test = prompts_from_args(args)
    scorer, behavior = resolve_scorer(args.behavior, args.model, args.feature)
    strengths = parse_floats(args.strengths, "--strengths")
    layer = args.layer if args.layer is not None else \
        hooked.config.get_recommended_layers("default")[0]
    if args.vector:
        vec = (SteeringVector.import_gguf(args.vector) if args.vector.endswith(".gguf")
               else SteeringVector.load(args.vector, hidden_size=hooked.hidden_size))
        vectors = vec.directions
    else:
        vectors = extract_steering_vectors(hooked, pos, neg, [layer])
    settings = {"layers": sorted(vectors), "strengths": strengths, "behavior": behavior,
                "samples": args.samples, "max_tokens": args.max_tokens, "seed": args.seed,
                "temperature": args.temperature, "prompts": test, "vector": args.vector,
                "instruction": args.instruction}
    result = ResultFile(args.output, "strength_sweep", hooked, settings, fresh=args.fresh)
    common = dict(samples_per_prompt=args.samples, max_tokens=args.max_tokens,
                  temperature=args.temperature, seed=args.seed)
    rows = timed_cell(result, "sweep", lambda: strength_sweep(
        hooked, None, vectors, test, scorer, strengths, **common))
    if args.instruction:
        timed_cell(result, "prompting_baseline", lambda: prompting_baseline(
            hooked, test, args.instruction, scorer, **common))
    result.finish({"rates": {r["strength"]: r["behavior_rate"] for r in rows}})
    print("strength | rate   | random-direction control | distinct-2")
    for r in rows:
        print(f"{r['strength']:>8g} | {r['behavior_rate']:6.0%} | {r['control_rate']:24.0%} | "
              f"{r['coherence']['distinct_2']:.2f}")

    def draw(ax: Any) -> None:
        xs = [r["strength"] for r in rows]
        ax.plot(xs, [r["behavior_rate"] for r in rows], "o-", label="steering vector")
        ax.plot(xs, [r["control_rate"] for r in rows], "x--", label="random direction, same norm")
        ax.set_xlabel(f"strength (alpha) at layers {sorted(vectors)}")
        ax.set_ylabel(f"behaviour rate ({behavior})")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Strength sweep")
        ax.legend(loc="best")

    print(f"wrote {args.output} and {save_plot(plot_path(args), draw)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(build_parser, run_cli, argv, "strength_sweep")


if __name__ == "__main__":
    sys.exit(main())
