"""`mlux search` on the built-in model: wall time of a 40-trial search, and what it finds
against today's grid tools.

Steer (sentiment, happy up): today's layer sweep (`mlux layer-sweep` defaults: alpha 0.3 of the
residual norm, every layer) picks a best layer; that grid point is scored by the search's own
objectives (same prompts, samples and seeds), and the search's best front trial with KL <= the
grid point's KL is compared with it. Ablate: prompts after the "mood: happy" marker; the
search's front against ablating the sentiment direction at every layer at full weight (the
attention and MLP outputs of every block, what `mlux bake --ablate` edits), and the base rate
of the neutral prompts. Seed 0 throughout; nothing here asserts on timing.

    PYTHONPATH=. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/bench_search.py    # --quick: a smoke test (4 trials, short samples)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import clock, environment, parser, since, write_report  # noqa: E402

from mlux import HookedModel  # noqa: E402
from mlux.experiments.common import residual_norms, sweep_directions  # noqa: E402
from mlux.experiments.layer_sweep import layer_sweep  # noqa: E402
from mlux.search import Trial, TrialScorer, search  # noqa: E402
from mlux.toy import CONTRAST_PROMPTS, MARKER_PREFIX, TEST_PROMPTS, feature_scorer  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "bench_search.json"
SEED, SAMPLES, MAX_TOKENS = 0, 2, 24  # the sweeps' and the verb's defaults
ALPHAS = (0.3, 0.75)


def _row(t: Trial) -> dict[str, Any]:
    return {"trial": t.number, "params": t.params, "behavior": t.behavior, "kl": t.kl,
            "perplexity": t.extras.get("perplexity")}


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in params.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser(__doc__, OUT, quick="4 trials of 1 short sample, layers 1-2 swept: a smoke "
                  "test").parse_args(argv)
    trials = 4 if args.quick else 40
    samples, max_tokens = (1, 4) if args.quick else (SAMPLES, MAX_TOKENS)
    hooked = HookedModel.from_pretrained("mlux-toy")
    contrast, happy = CONTRAST_PROMPTS["sentiment"], feature_scorer("sentiment", "happy")
    test = list(TEST_PROMPTS)
    marker = f"{MARKER_PREFIX['sentiment']} happy"
    marked = [marker] + [f"{marker} {p}" for p in test if not p.startswith("<")]

    directions, acts = sweep_directions(hooked, contrast)
    residual = residual_norms(hooked, list(directions), acts, test)
    ids = [hooked.tokenize(p).tokens[0].tolist() for p in test]
    steer = TrialScorer(hooked, "steer", directions, residual, ids, ids, happy,
                        samples=samples, max_tokens=max_tokens, seed=SEED)
    sweeps = []
    for alpha in ALPHAS:  # the sweep's default push, and the README's
        t0 = clock()
        sweep = layer_sweep(hooked, contrast, test, happy, alpha=alpha, seed=SEED,
                            samples_per_prompt=samples, max_tokens=max_tokens,
                            layers=[1, 2] if args.quick else None)
        best_layer = sweep.best_layers[0]
        (grid,) = steer.measure([{"layer": float(best_layer), "strength": alpha,
                                  "window": "all"}])
        sweeps.append({"alpha": alpha, "best_layer": best_layer, "wall_seconds": since(t0)[0],
                       "rate_positive_labelled": next(r["rate_positive"] for r in sweep.rows
                                                      if r["layer"] == best_layer),
                       "grid_point": {"behavior": grid.behavior, "kl": grid.kl,
                                      "perplexity": grid.extras.get("perplexity")}})
    layer = sweeps[0]["best_layer"]

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = clock()
        res = search(hooked, contrast, test, happy, harmless=test, trials=trials, seed=SEED,
                     out=Path(tmp) / "steer", behavior="toy:sentiment=happy",
                     samples=samples, max_tokens=max_tokens)
        wall, cpu, _ = since(t0)
        for sw in sweeps:
            kl = sw["grid_point"]["kl"]
            best = res.best(max_kl=kl) if min(t.kl for t in res.trials) <= kl else None
            sw["best_front_at_grid_kl"] = None if best is None else _row(best)
        report["steer"] = {
            "trials": len(res.trials), "wall_seconds": wall, "cpu_seconds": cpu,
            "layer_sweeps": sweeps,
            "front": [_row(t) for t in res.front]}

        marked_ids = [hooked.tokenize(p).tokens[0].tolist() for p in marked]
        ablate = TrialScorer(hooked, "ablate", directions, residual, marked_ids, ids, happy,
                             samples=samples, max_tokens=max_tokens, seed=SEED)
        # Full weight in every block, the direction of each layer the search may centre on;
        # the one that lands closest to the base rate is the baseline.
        full = [{"layer": float(i), "max_weight": 1.0, "distance": 6.0, "min_weight": 1.0,
                 "window": "all"} for i in range(5)]
        unsteered, *fulls = ablate.measure([{**full[0], "max_weight": 0.0}, *full])
        base = steer.measure([{"layer": float(layer), "strength": 0.0, "window": "all"}])[0]
        t0 = clock()
        res_a = search(hooked, contrast, marked, happy, harmless=test, trials=trials,
                       seed=SEED, mode="ablate", out=Path(tmp) / "ablate",
                       behavior="toy:sentiment=happy", samples=samples, max_tokens=max_tokens)
        wall_a, cpu_a, _ = since(t0)
        everywhere, where = min(zip(fulls, full, strict=True),
                                key=lambda m: abs(m[0].behavior - base.behavior))
        cheaper = [t for t in res_a.front if t.kl < everywhere.kl]
        closest = min(cheaper, key=lambda t: abs(t.behavior - base.behavior), default=None)
        report["ablate"] = {
            "trials": len(res_a.trials), "wall_seconds": wall_a, "cpu_seconds": cpu_a,
            "prompts": marked, "base_rate_neutral": base.behavior,
            "marker_rate_unablated": unsteered.behavior,
            "every_layer_full_weight": {"params": where, "behavior": everywhere.behavior,
                                        "kl": everywhere.kl},
            "every_layer_full_weight_per_direction": [
                {"direction_layer": p["layer"], "behavior": m.behavior, "kl": m.kl}
                for p, m in zip(full, fulls, strict=True)],
            "front_trial_closest_to_base_at_lower_kl": None if closest is None
            else _row(closest),
            "front": [_row(t) for t in res_a.front]}

    s, a = report["steer"], report["ablate"]
    c, e = a["front_trial_closest_to_base_at_lower_kl"], a["every_layer_full_weight"]
    lines = [f"steer: {s['trials']} trials in {s['wall_seconds']:.1f} s wall "
             f"({s['cpu_seconds']:.1f} s cpu)"]
    for sw in sweeps:
        g, b = sw["grid_point"], sw["best_front_at_grid_kl"]
        lines += [
            f"  layer sweep alpha {sw['alpha']} ({sw['wall_seconds']:.1f} s): best layer "
            f"{sw['best_layer']}; that grid point: happy {g['behavior']:.1%}, KL {g['kl']:.4f}",
            "    best front trial at KL <= that: " + ("none" if b is None else
                f"trial {b['trial']} {_short(b['params'])}: happy {b['behavior']:.1%}, "
                f"KL {b['kl']:.4f}")]
    lines += [
        f"ablate: {a['trials']} trials in {a['wall_seconds']:.1f} s wall; base rate (neutral) "
        f"{a['base_rate_neutral']:.1%}, '{marker}' unablated {a['marker_rate_unablated']:.1%}",
        f"  every layer, full weight (direction of layer {e['params']['layer']:.0f}): happy "
        f"{e['behavior']:.1%}, KL {e['kl']:.4f}",
        "  front trial closest to the base rate at lower KL: " + ("none" if c is None else
            f"trial {c['trial']} {_short(c['params'])}: happy {c['behavior']:.1%}, "
            f"KL {c['kl']:.4f}"),
    ]
    result = {**environment("bench_search.py", list(argv or []),
                            {"id": "mlux-toy", "num_layers": hooked.num_layers,
                             "hidden_size": hooked.hidden_size},
                            {"trials": trials, "seed": SEED, "samples": samples,
                             "max_tokens": max_tokens, "quick": args.quick}),
              **report, "table": "\n".join(lines)}
    write_report(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
