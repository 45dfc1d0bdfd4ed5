"""Measure the built-in model's steering table and write it into both model cards.

For each feature, layer and alpha: the rate of the feature's first value (happy / formal) and
of the other feature, and the grammar score, over seeded temperature-1 continuations of the
neutral test prompts, steering every position. fp32 and 4-bit, side by side.

    python experiments/toy_model/steering_table.py [--samples 4]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from mlux import HookedModel, extract_steering_vectors
from mlux.atomic import atomic_write_json, atomic_write_text
from mlux.behavior import behavior_rates
from mlux.builtin import builtin_model_path
from mlux.toy import CONTRAST_PROMPTS, FEATURES, TEST_PROMPTS, feature_label, grammar_score

ALPHAS = {"sentiment": (-8.0, -2.0, -1.0, 0.0, 1.0, 2.0, 8.0),
          "formality": (-4.0, -1.0, -0.75, 0.0, 0.75, 1.0, 4.0)}
LAYERS = (1, 2, 3, 4)


def _rate(texts: list[str], feature: str) -> Optional[float]:
    labels = [x for x in (feature_label(t, feature) for t in texts) if x is not None]
    return sum(x == FEATURES[feature][0] for x in labels) / len(labels) if labels else None


def measure(name: str, samples: int) -> list[dict[str, Any]]:
    hooked = HookedModel.from_pretrained(name)
    rows = []
    for feature, alphas in ALPHAS.items():
        other = next(f for f in FEATURES if f != feature)
        pos, neg = CONTRAST_PROMPTS[feature]
        vectors = extract_steering_vectors(hooked, pos, neg, list(LAYERS))
        for layer in LAYERS:
            cells = behavior_rates(hooked, vectors, TEST_PROMPTS, None, alphas=alphas,
                                   layers=[layer], samples_per_prompt=samples, max_tokens=24,
                                   seed=1, keep_texts=10_000, positions="all")
            for c in cells:
                rows.append({"model": name, "feature": feature, "layer": layer,
                             "alpha": c.alpha, "rate": _rate(c.texts, feature),
                             "other_rate": _rate(c.texts, other),
                             "grammar": sum(map(grammar_score, c.texts)) / len(c.texts),
                             "samples": c.samples})
    return rows


def markdown(rows: list[dict[str, Any]], samples: int) -> str:
    lines = [
        "## Steering table",
        "",
        f"Contrastive (mean-difference) vectors from `CONTRAST_PROMPTS`, added at every "
        f"position of `residuals_<layer>`; {len(TEST_PROMPTS)} neutral prompts x {samples} "
        "seeded temperature-1 samples per cell (24 tokens). Each cell: rate of the steered "
        "feature's first value (happy / formal) / rate of the other feature's / mean grammar "
        "score. Measured by `experiments/toy_model/steering_table.py`.",
    ]
    for feature, alphas in ALPHAS.items():
        for model in dict.fromkeys(r["model"] for r in rows):
            lines += ["", f"**{feature}** ({model})", "",
                      "| layer | " + " | ".join(f"alpha {a:+g}" for a in alphas) + " |",
                      "|---|" + "---|" * len(alphas)]
            for layer in LAYERS:
                cells = {r["alpha"]: r for r in rows if (r["model"], r["feature"], r["layer"])
                         == (model, feature, layer)}
                lines.append(f"| {layer} | " + " | ".join(
                    f"{_pct(cells[a]['rate'])} / {_pct(cells[a]['other_rate'])} / "
                    f"{cells[a]['grammar']:.2f}" for a in alphas) + " |")
    return "\n".join(lines) + "\n"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0%}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4, help="samples per prompt per cell")
    args = p.parse_args(argv)
    rows = [r for name in ("mlux-toy", "mlux-toy-4bit") for r in measure(name, args.samples)]
    table = markdown(rows, args.samples)
    print(table)
    root = builtin_model_path("mlux-toy")
    atomic_write_json(root / "steering_table.json", {"samples_per_prompt": args.samples,
                                                     "rows": rows})
    for name in ("mlux-toy", "mlux-toy-4bit"):
        card = Path(builtin_model_path(name)) / "README.md"
        text = re.sub(r"## Steering table\n.*?(?=\n## |\Z)", table.rstrip("\n") + "\n",
                      card.read_text(), flags=re.S)
        atomic_write_text(card, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
