"""An SAE feature that tracks sentiment on the built-in model, and steering by clamping it.

Two SAE sets (TopK k=8, 384 features, one per residual layer, same settings), differing only in
their training data: the shipped prompts (`configs/models/mlux-toy.yaml`: 256 short happy/sad
prompts, no "mood:" marker) and paragraphs of the model's own training corpus
(`configs/models/mlux-toy-corpus.yaml`: 512 from `mlux.toy.generate_corpus`, ~20% start with a
"mood: happy|sad" marker, as in training). Collections and SAEs are resumable.

For every layer of both sets: the feature whose prompt-mean activation separates the shipped
happy/sad prompts best on a 70% split, its held-out probe accuracy (threshold at the midpoint of
the class means), the SAE's relative reconstruction error on the marker tokens, and the happy
rate of "mood: happy" with that feature clamped to 0 (error term kept, every position,
`Steering(sae_clamp=...)` on the one decoder). At the corpus SAE's best layer (highest probe
accuracy, then separation): neutral prompts and "mood: sad" clamped high, "mood: happy" clamped
to 0 (every position, the prompt's tokens only, and again with another sampling seed), and
controls: "mood: happy" with other features clamped to 0 (random live ones, and every one whose
firing rate on the corpus tokens is within 2x the chosen feature's). Rates over seeded samples
with n and Wilson 95% intervals; writes experiments/results/sae_toy.json.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/toy_model/sae_sentiment.py
"""

from __future__ import annotations

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
CONFIGS = {"prompts": REPO / "configs" / "models" / "mlux-toy.yaml",
           "corpus": REPO / "configs" / "models" / "mlux-toy-corpus.yaml"}
OUT = REPO / "experiments" / "results" / "sae_toy.json"
SAMPLES, MAX_TOKENS, SEED, CONTROLS = 256, 24, 11, 5  # samples per cell; random control features
REPLICATION_SEED = 5000  # row i samples with seed + i: far from SEED, so independent rows
HAPPY, SAD = (f"{MARKER_PREFIX['sentiment']} {m}" for m in ("happy", "sad"))


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


def happy_rate(hooked: HookedModel, prompts: list[str], clamp: Optional[tuple] = None,
               positions: Any = "all", seed: int = SEED) -> dict[str, Any]:
    """Happy rate of `SAMPLES` seeded continuations spread over `prompts`."""
    rows = [prompts[i % len(prompts)] for i in range(SAMPLES)]
    steering = [Steering(sae_clamp=clamp, positions=positions) if clamp else None] * SAMPLES
    outs = generate_batch(hooked, rows, max_tokens=MAX_TOKENS, steering=steering,
                          temperature=1.0, seed=seed)
    scorer = feature_scorer("sentiment", "happy")
    verdicts = [v for v in (scorer(hooked.tokenizer.decode(o)) for o in outs) if v is not None]
    n, k = len(verdicts), sum(verdicts)
    lo, hi = wilson_interval(k, n)
    return {"happy": k, "labelled": n, "samples": SAMPLES, "rate": k / n if n else None,
            "wilson95": [lo, hi]}


def marker_error(hooked: HookedModel, sae: SparseAutoencoder) -> dict[str, Any]:
    """Relative reconstruction error |x - sae(x)| / |x| on the marker prompts' tokens, and the
    feature activations at the marker's last token ("happy" / "sad")."""
    hook = sae.config.hook
    x = {p: np.asarray(hooked.capture(p, [hook])[hook][0]) for p in (HAPPY, SAD)}
    rel = [np.linalg.norm(a - np.asarray(sae.forward(a)), axis=-1) / np.linalg.norm(a, axis=-1)
           for a in x.values()]
    last = {p: np.asarray(sae.encode(a))[-1] for p, a in x.items()}
    return {"relative_error": float(np.mean(np.concatenate(rel))),
            "at_marker": {p: last[p] for p in last}}


def probe_layers(hooked: HookedModel, probe_dir: Path, saes: dict[str, Any]
                 ) -> dict[str, dict[str, Any]]:
    """Per residual layer: the best sentiment feature on the shipped prompts, its probe accuracy,
    SAE metrics, marker reconstruction error, and "mood: happy" with it clamped to 0."""
    layers = {}
    for hook, r in saes.items():
        if not hook.startswith("residuals_"):
            continue
        happy, sad = (load_activations(probe_dir, hook, "mean", [c], echo=lambda s: None)
                      for c in ("happy", "sad"))
        best = best_feature(r.sae, happy, sad)
        marker = marker_error(hooked, r.sae)
        j = best["feature"]
        layers[hook] = {**best, **{k: r.metrics[k] for k in ("fve", "l0", "ce_loss_recovered")},
                        "marker_relative_error": marker["relative_error"],
                        "at_marker_happy": float(marker["at_marker"][HAPPY][j]),
                        "at_marker_sad": float(marker["at_marker"][SAD][j]),
                        "mood_happy_clamped_to_0": happy_rate(hooked, [HAPPY], (r.sae, j, 0.0))}
    return layers


def firing_rates(result_dir: Path, sae: SparseAutoencoder) -> dict[str, np.ndarray]:
    """Per feature: the fraction of tokens of the happy / sad / all paragraphs of the collection
    the SAE was trained on where it fires."""
    out = {c: np.asarray(sae.encode(load_activations(result_dir, sae.config.hook, "all", [c],
                                                     echo=lambda s: None))) > 0
           for c in ("happy", "sad")}
    return {**{c: f.mean(0) for c, f in out.items()},
            "all": np.concatenate(list(out.values())).mean(0)}


def main() -> int:
    hooked = HookedModel.from_pretrained("mlux-toy")
    dirs, saes = {}, {}
    for name, path in CONFIGS.items():
        config = load_config(path)
        dirs[name] = REPO / config.output.result_dir
        collect(config.replace("output", result_dir=str(dirs[name])), progress=False)
        saes[name] = train_saes(dirs[name], config.sae, progress=False, hooked=hooked)
    report: dict[str, Any] = {"model": "mlux-toy", "samples": SAMPLES, "max_tokens": MAX_TOKENS,
                              "temperature": 1.0, "seed": SEED, "probe_data": "mlux-toy.yaml",
                              "sae_data": {k: str(v.relative_to(REPO)) for k, v in CONFIGS.items()},
                              "layers": {k: probe_layers(hooked, dirs["prompts"], v)
                                         for k, v in saes.items()}}
    layers = report["layers"]["corpus"]
    hook = max(layers, key=lambda h: (layers[h]["probe_accuracy"], layers[h]["separation"]))
    sae, best = saes["corpus"][hook].sae, layers[hook]
    j = best["feature"]
    rates = firing_rates(dirs["corpus"], sae)
    live = np.flatnonzero(rates["all"] > 0)
    rng = np.random.default_rng(SEED)
    f0 = rates["all"][j]
    matched = np.flatnonzero((rates["all"] >= f0 / 2) & (rates["all"] <= 2 * f0))
    controls = {"random live": [int(c) for c in rng.choice(live[live != j], CONTROLS, False)],
                "frequency-matched": [int(c) for c in matched if c != j]}
    highs = [round(best["max_happy"] * m, 2) for m in (1, 2, 4, 8)]
    prompt_only = (0, len(hooked.tokenizer.encode(HAPPY)))
    neutral = list(TEST_PROMPTS)
    report.update({
        "hook": hook, "feature": best, "live_features": int(len(live)),
        "firing_rate": {k: float(v[j]) for k, v in rates.items()},
        "neutral_prompts": {"unclamped": happy_rate(hooked, neutral),
                            **{f"clamped to {v}": happy_rate(hooked, neutral, (sae, j, v))
                               for v in highs}},
        "mood_sad_prompt": {"unclamped": happy_rate(hooked, [SAD]),
                            **{f"clamped to {v}": happy_rate(hooked, [SAD], (sae, j, v))
                               for v in highs}},
        "mood_happy_prompt": {"unclamped": happy_rate(hooked, [HAPPY]),
                              "clamped to 0": best["mood_happy_clamped_to_0"],
                              "clamped to 0 on the prompt's tokens only": happy_rate(
                                  hooked, [HAPPY], (sae, j, 0.0), positions=prompt_only),
                              f"unclamped, seed {REPLICATION_SEED}": happy_rate(
                                  hooked, [HAPPY], seed=REPLICATION_SEED),
                              f"clamped to 0, seed {REPLICATION_SEED}": happy_rate(
                                  hooked, [HAPPY], (sae, j, 0.0), seed=REPLICATION_SEED)},
        "controls_mood_happy_other_feature_clamped_to_0": {
            kind: {str(c): {"firing_rate": {k: float(v[c]) for k, v in rates.items()},
                            **happy_rate(hooked, [HAPPY], (sae, c, 0.0))} for c in cs}
            for kind, cs in controls.items()}})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, report)

    def fmt(c: dict[str, Any]) -> str:
        lo, hi = c["wilson95"]
        return f"{c['happy']}/{c['labelled']} = {c['rate']:.3f} [{lo:.3f}, {hi:.3f}]"

    for name, by_hook in report["layers"].items():
        for h, v in by_hook.items():
            print(f"{name:<8} {h:<12} feature {v['feature']:>3}  probe {v['probe_accuracy']:.3f} "
                  f"(n={v['test_rows']})  fve {v['fve']:.3f}  marker rel. error "
                  f"{v['marker_relative_error']:.3f}  at 'happy' {v['at_marker_happy']:.2f}  "
                  f"'mood: happy' clamped 0: {fmt(v['mood_happy_clamped_to_0'])}")
    fr = report["firing_rate"]
    print(f"best (corpus SAE): {hook} feature {j}, fires on {fr['happy']:.2f} of happy-paragraph "
          f"tokens, {fr['sad']:.2f} of sad ({len(live)} live features)")
    for part in ("neutral_prompts", "mood_sad_prompt", "mood_happy_prompt"):
        for name, c in report[part].items():
            print(f"{part:<18} {name:<40} happy {fmt(c)}")
    for kind, cs in report["controls_mood_happy_other_feature_clamped_to_0"].items():
        for c, v in cs.items():
            r = v["firing_rate"]
            print(f"control ({kind}) feature {c:>3} (fires on {r['happy']:.2f} happy / "
                  f"{r['sad']:.2f} sad tokens) clamped 0: happy {fmt(v)}")
    print(json.dumps({"wrote": str(OUT)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
