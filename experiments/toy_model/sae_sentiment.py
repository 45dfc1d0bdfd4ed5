"""An SAE feature that tracks sentiment on the built-in model, and steering by clamping it.

Collects the toy data set and trains one SAE per layer (`configs/models/mlux-toy.yaml`, both
resumable), then for each residual layer picks, on a training split of the collected happy/sad
prompts, the feature whose mean activation over the prompt separates them best and reports its
held-out probe accuracy (a threshold at the midpoint of the class means). At the best layer it
clamps that feature (error term kept, `Steering(sae_clamp=...)` on the one decoder):
high on the neutral test prompts and on "mood: sad" (does the happy rate rise?) and to 0 on
"mood: happy" (does it fall?). Then the same per layer for coarse SAEs (expansion 1, k 2: 96
features, 2 active) trained the same way, every layer reported. Rates over seeded samples with n
and Wilson 95% intervals; writes experiments/results/sae_toy.json.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/toy_model/sae_sentiment.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mlux.atomic import atomic_write_json
from mlux.collect import collect, load_activations, load_config
from mlux.evaluation import wilson_interval
from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.sae import SparseAutoencoder, train_saes
from mlux.steering import Steering
from mlux.toy import MARKER_PREFIX, TEST_PROMPTS, feature_scorer

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "models" / "mlux-toy.yaml"
OUT = REPO / "experiments" / "results" / "sae_toy.json"
SAMPLES, MAX_TOKENS, SEED = 256, 24, 11  # samples per condition
COARSE = {"expansion": 1, "k": 2, "hook_points": ["residuals_0", "residuals_1", "residuals_2",
                                                  "residuals_3"]}


def best_feature(sae: SparseAutoencoder, happy: np.ndarray, sad: np.ndarray, seed: int = 0
                 ) -> dict[str, Any]:
    """The feature separating happy from sad best on a 70% split, and its held-out accuracy."""
    rng = np.random.default_rng(seed)
    split = {}
    for name, x in (("happy", happy), ("sad", sad)):
        order = rng.permutation(len(x))
        cut = int(0.7 * len(x))
        f = np.asarray(sae.encode(x))
        split[name] = (f[order[:cut]], f[order[cut:]])
    (h_tr, h_te), (s_tr, s_te) = split["happy"], split["sad"]
    pooled = np.sqrt((h_tr.var(0) + s_tr.var(0)) / 2) + 1e-6
    score = (h_tr.mean(0) - s_tr.mean(0)) / pooled  # > 0: fires more on happy prompts
    j = int(np.argmax(score))
    threshold = (h_tr[:, j].mean() + s_tr[:, j].mean()) / 2
    correct = (h_te[:, j] > threshold).sum() + (s_te[:, j] <= threshold).sum()
    return {"feature": j, "separation": float(score[j]), "threshold": float(threshold),
            "probe_accuracy": float(correct / (len(h_te) + len(s_te))),
            "test_rows": int(len(h_te) + len(s_te)),
            "mean_happy": float(h_tr[:, j].mean()), "mean_sad": float(s_tr[:, j].mean()),
            "max_happy": float(h_tr[:, j].max())}


def happy_rate(hooked: HookedModel, prompts: list[str], clamp: Optional[tuple] = None
               ) -> dict[str, Any]:
    """Happy rate of `SAMPLES` seeded continuations spread over `prompts`."""
    rows = [prompts[i % len(prompts)] for i in range(SAMPLES)]
    steering = [Steering(sae_clamp=clamp) if clamp else None] * SAMPLES
    outs = generate_batch(hooked, rows, max_tokens=MAX_TOKENS, steering=steering,
                          temperature=1.0, seed=SEED)
    scorer = feature_scorer("sentiment", "happy")
    verdicts = [v for v in (scorer(hooked.tokenizer.decode(o)) for o in outs) if v is not None]
    n, k = len(verdicts), sum(verdicts)
    lo, hi = wilson_interval(k, n)
    return {"happy": k, "labelled": n, "samples": SAMPLES, "rate": k / n if n else None,
            "wilson95": [lo, hi]}


def probe_layers(result_dir: Path, saes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per residual layer: the best sentiment feature, its probe accuracy, and SAE metrics."""
    layers = {}
    for hook, r in saes.items():
        if not hook.startswith("residuals_"):
            continue
        happy, sad = (load_activations(result_dir, hook, "mean", [c], echo=lambda s: None)
                      for c in ("happy", "sad"))
        layers[hook] = {**best_feature(r.sae, happy, sad),
                        **{k: r.metrics[k] for k in ("fve", "l0", "ce_loss_recovered",
                                                     "kl_div_with_sae")}}
    return layers


def main() -> int:
    config = load_config(CONFIG)
    result_dir = REPO / config.output.result_dir
    config = config.replace("output", result_dir=str(result_dir))
    collect(config, progress=False)
    hooked = HookedModel.from_pretrained("mlux-toy")
    saes = train_saes(result_dir, config.sae, progress=False, hooked=hooked)
    layers = probe_layers(result_dir, saes)
    hook = max(layers, key=lambda h: (layers[h]["probe_accuracy"], layers[h]["separation"]))
    sae, best = saes[hook].sae, layers[hook]
    j = best["feature"]
    marker, sad = ([f"{MARKER_PREFIX['sentiment']} {m}"] for m in ("happy", "sad"))
    neutral = list(TEST_PROMPTS)
    highs = [round(best["max_happy"] * m, 2) for m in (1, 2, 4)]
    report = {"model": "mlux-toy", "hook": hook, "feature": best, "layers": layers,
              "samples": SAMPLES, "max_tokens": MAX_TOKENS, "temperature": 1.0,
              "neutral_prompts": {"unclamped": happy_rate(hooked, neutral),
                                  **{f"clamped to {v}": happy_rate(hooked, neutral, (sae, j, v))
                                     for v in highs}},
              "mood_happy_prompt": {"unclamped": happy_rate(hooked, marker),
                                    "clamped to 0": happy_rate(hooked, marker, (sae, j, 0.0))},
              "mood_sad_prompt": {"unclamped": happy_rate(hooked, sad),
                                  **{f"clamped to {v}": happy_rate(hooked, sad, (sae, j, v))
                                     for v in highs}}}
    coarse = train_saes(result_dir, dataclasses.replace(config.sae, **COARSE),
                        out_dir=result_dir / "sae_coarse", progress=False, hooked=hooked)
    report["coarse"] = {"settings": COARSE, "layers": probe_layers(result_dir, coarse)}
    for hook, v in report["coarse"]["layers"].items():
        c = (coarse[hook].sae, v["feature"])
        v["mood_happy_clamped_to_0"] = happy_rate(hooked, marker, (*c, 0.0))
        v["neutral_clamped_high"] = {"value": 4 * v["max_happy"],
                                     **happy_rate(hooked, neutral, (*c, 4 * v["max_happy"]))}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, report)
    for h, v in layers.items():
        print(f"{h:<12} feature {v['feature']:>4}  probe accuracy {v['probe_accuracy']:.3f} "
              f"(n={v['test_rows']})  fve {v['fve']:.3f}  CE recovered "
              f"{v['ce_loss_recovered']:.3f}  KL {v['kl_div_with_sae']:.4f}")
    print(f"best: {hook} feature {j}")
    for part in ("neutral_prompts", "mood_sad_prompt", "mood_happy_prompt"):
        for name, c in report[part].items():
            lo, hi = c["wilson95"]
            print(f"{part:<18} {name:<16} happy {c['happy']}/{c['labelled']} = {c['rate']:.3f} "
                  f"[{lo:.3f}, {hi:.3f}]")
    for h, v in report["coarse"]["layers"].items():
        m, n = v["mood_happy_clamped_to_0"], v["neutral_clamped_high"]
        print(f"coarse {h:<12} feature {v['feature']:>3}  probe {v['probe_accuracy']:.3f}  "
              f"'mood: happy' clamped 0: {m['happy']}/{m['labelled']} = {m['rate']:.3f} "
              f"[{m['wilson95'][0]:.3f}, {m['wilson95'][1]:.3f}]  neutral clamped "
              f"{n['value']:.2f}: {n['rate']:.3f} [{n['wilson95'][0]:.3f}, "
              f"{n['wilson95'][1]:.3f}]")
    print(json.dumps({"wrote": str(OUT)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
