"""Does a baked model behave like the hooked original? Measured on the built-in model.

Additive: the sentiment vector baked at layer 2 with alpha a (`mlux bake --vector`), run as a
plain model, against the original steered by the equivalent hook: happy rate over seeded samples
of the neutral test prompts (same seeds). Ablation: the sentiment direction of layer 2 baked out
of the weights (`mlux bake --ablate`): the marker-conditioned prompts ("mood: happy" / "mood:
sad") should lose their pull, towards the neutral base rate. Writes results/bake_toy.json.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/toy_model/bake_effect.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mlux import HookedModel, extract_steering_vectors
from mlux.atomic import atomic_write_json
from mlux.bake import bake_ablation, bake_steering
from mlux.behavior import behavior_rates
from mlux.toy import CONTRAST_PROMPTS, MARKER_PREFIX, TEST_PROMPTS, feature_scorer

LAYER, ALPHAS, SAMPLES = 2, (-2.0, 2.0), 8
OUT = Path(__file__).resolve().parents[1] / "results" / "bake_toy.json"


def happy_rate(hooked: HookedModel, vector, prompts, alpha: float = 0.0) -> dict:
    samples = SAMPLES * len(TEST_PROMPTS) // len(prompts)  # every row gets as many samples
    (cell,) = behavior_rates(hooked, vector, list(prompts), feature_scorer("sentiment", "happy"),
                             alphas=[alpha], layers=[LAYER], samples_per_prompt=samples, seed=7)
    return {"rate": cell.rate, "labelled": cell.labelled, "samples": cell.samples}


def main() -> int:
    hooked = HookedModel.from_pretrained("mlux-toy")
    vec = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [LAYER])
    markers = [f"{MARKER_PREFIX['sentiment']} {v}" for v in ("happy", "sad")]
    report: dict = {"model": "mlux-toy", "layer": LAYER, "samples_per_prompt": SAMPLES,
                    "additive": {}, "ablation": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in ALPHAS:
            out = Path(tmp) / f"steer{alpha}"
            bake_steering(hooked, vec, alpha, layers=[LAYER], out=out)
            baked = HookedModel.from_pretrained(str(out))
            report["additive"][str(alpha)] = {
                "hooked_original": happy_rate(hooked, vec, TEST_PROMPTS, alpha),
                "baked_plain": happy_rate(baked, vec, TEST_PROMPTS, 0.0)}
        bake_ablation(hooked, vec, layers=[LAYER], out=Path(tmp) / "ablated")
        ablated = HookedModel.from_pretrained(str(Path(tmp) / "ablated"))
        report["ablation"] = {
            "base_rate_neutral_prompts": happy_rate(hooked, vec, TEST_PROMPTS),
            **{f"original {m!r}": happy_rate(hooked, vec, [m]) for m in markers},
            **{f"ablated {m!r}": happy_rate(ablated, vec, [m]) for m in markers}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, report)
    for part in ("additive", "ablation"):
        for k, v in report[part].items():
            print(part, k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
