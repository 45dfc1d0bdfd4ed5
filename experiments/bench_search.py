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
        python experiments/bench_search.py    # --quick: 6 trials, a smoke test
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


def _row(t: Trial) -> dict[str, Any]:
    return {"trial": t.number, "params": t.params, "behavior": t.behavior, "kl": t.kl,
            "perplexity": t.extras.get("perplexity")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser(__doc__, OUT, quick="6 trials: a smoke test").parse_args(argv)
    trials = 6 if args.quick else 40
    hooked = HookedModel.from_pretrained("mlux-toy")
    contrast, happy = CONTRAST_PROMPTS["sentiment"], feature_scorer("sentiment", "happy")
    test = list(TEST_PROMPTS)
    marker = f"{MARKER_PREFIX['sentiment']} happy"
    marked = [marker] + [f"{marker} {p}" for p in test if not p.startswith("<")]

    t0 = clock()
    sweep = layer_sweep(hooked, contrast, test, happy, alpha=0.3, seed=SEED,
                        samples_per_prompt=SAMPLES, max_tokens=MAX_TOKENS)
    sweep_wall = since(t0)[0]
    layer = sweep.best_layers[0]
    directions, acts = sweep_directions(hooked, contrast)
    residual = residual_norms(hooked, list(directions), acts, test)
    ids = [hooked.tokenize(p).tokens[0].tolist() for p in test]
    steer = TrialScorer(hooked, "steer", directions, residual, ids, ids, happy,
                        samples=SAMPLES, max_tokens=MAX_TOKENS, seed=SEED)
    grid = steer.measure([{"layer": float(layer), "strength": 0.3, "window": "all"}])[0]

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = clock()
        res = search(hooked, contrast, test, happy, harmless=test, trials=trials, seed=SEED,
                     out=Path(tmp) / "steer", behavior="toy:sentiment=happy",
                     samples=SAMPLES, max_tokens=MAX_TOKENS)
        wall, cpu, _ = since(t0)
        best = res.best(max_kl=grid.kl) if min(t.kl for t in res.trials) <= grid.kl else None
        report["steer"] = {
            "trials": len(res.trials), "wall_seconds": wall, "cpu_seconds": cpu,
            "layer_sweep": {"best_layer": layer, "wall_seconds": sweep_wall,
                            "rate_positive_labelled": next(
                                r["rate_positive"] for r in sweep.rows if r["layer"] == layer)},
            "grid_point": {"layer": layer, "strength": 0.3, "window": "all",
                           "behavior": grid.behavior, "kl": grid.kl,
                           "perplexity": grid.extras.get("perplexity")},
            "best_front_at_grid_kl": None if best is None else _row(best),
            "front": [_row(t) for t in res.front]}

        marked_ids = [hooked.tokenize(p).tokens[0].tolist() for p in marked]
        ablate = TrialScorer(hooked, "ablate", directions, residual, marked_ids, ids, happy,
                             samples=SAMPLES, max_tokens=MAX_TOKENS, seed=SEED)
        full = {"layer": float(layer), "max_weight": 1.0, "distance": 6.0, "min_weight": 1.0,
                "window": "all"}
        unsteered, everywhere = ablate.measure([{**full, "max_weight": 0.0}, full])
        base = steer.measure([{"layer": float(layer), "strength": 0.0, "window": "all"}])[0]
        t0 = clock()
        res_a = search(hooked, contrast, marked, happy, harmless=test, trials=trials,
                       seed=SEED, mode="ablate", out=Path(tmp) / "ablate",
                       behavior="toy:sentiment=happy", samples=SAMPLES, max_tokens=MAX_TOKENS)
        wall_a, cpu_a, _ = since(t0)
        cheaper = [t for t in res_a.front if t.kl < everywhere.kl]
        closest = min(cheaper, key=lambda t: abs(t.behavior - base.behavior), default=None)
        report["ablate"] = {
            "trials": len(res_a.trials), "wall_seconds": wall_a, "cpu_seconds": cpu_a,
            "prompts": marked, "base_rate_neutral": base.behavior,
            "marker_rate_unablated": unsteered.behavior,
            "every_layer_full_weight": {"params": full, "behavior": everywhere.behavior,
                                        "kl": everywhere.kl},
            "front_trial_closest_to_base_at_lower_kl": None if closest is None
            else _row(closest),
            "front": [_row(t) for t in res_a.front]}

    s, a = report["steer"], report["ablate"]
    g, b = s["grid_point"], s["best_front_at_grid_kl"]
    c, e = a["front_trial_closest_to_base_at_lower_kl"], a["every_layer_full_weight"]
    lines = [
        f"steer: {s['trials']} trials in {s['wall_seconds']:.1f} s wall ({s['cpu_seconds']:.1f} s "
        f"cpu); layer sweep {s['layer_sweep']['wall_seconds']:.1f} s, best layer {layer}",
        f"  grid point (layer {layer}, strength 0.3, all): happy {g['behavior']:.1%}, "
        f"KL {g['kl']:.4f}",
        "  best front trial at KL <= that: " + ("none" if b is None else
            f"trial {b['trial']} {b['params']}: happy {b['behavior']:.1%}, KL {b['kl']:.4f}"),
        f"ablate: {a['trials']} trials in {a['wall_seconds']:.1f} s wall; base rate (neutral) "
        f"{a['base_rate_neutral']:.1%}, '{marker}' unablated {a['marker_rate_unablated']:.1%}",
        f"  every layer, full weight: happy {e['behavior']:.1%}, KL {e['kl']:.4f}",
        "  front trial closest to the base rate at lower KL: " + ("none" if c is None else
            f"trial {c['trial']} {c['params']}: happy {c['behavior']:.1%}, KL {c['kl']:.4f}"),
    ]
    result = {**environment("bench_search.py", list(argv or []),
                            {"id": "mlux-toy", "num_layers": hooked.num_layers,
                             "hidden_size": hooked.hidden_size},
                            {"trials": trials, "seed": SEED, "samples": SAMPLES,
                             "max_tokens": MAX_TOKENS}),
              **report, "table": "\n".join(lines)}
    write_report(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
