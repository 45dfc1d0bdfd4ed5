"""Conditional steering on the built-in model: condition = formality (formal), behaviour =
sentiment (happy). Writes results/condition_toy.json.

1. The gate: condition vectors extracted from the formality contrast; the grid search
   (`find_condition_point`) runs on one set of generated formal / casual prompts, the best cell
   is scored (F1) on a second, held-out set.
2. The behaviour: happy rate (sampled, seeded) on the held-out formal and casual prompts,
   unsteered, steered always, steered if formal (the condition) and steered if not formal (the
   complement: comparator flipped), with Wilson 95% intervals.

The prompts carry formality only (formal / casual openers, groups, intensifiers), never a
sentiment word, so the unsteered model continues them about 50/50 happy/sad.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/toy_model/condition_effect.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlux import HookedModel, Steering, extract_steering_vectors, generate_batch
from mlux.atomic import atomic_write_json
from mlux.condition_search import f1_score, find_condition_point
from mlux.evaluation import wilson_interval
from mlux.toy import CONTRAST_PROMPTS, WORDS, feature_scorer

OUT = Path(__file__).resolve().parents[1] / "results" / "condition_toy.json"
BEHAVIOUR_LAYER, ALPHA = 2, 2.0  # the sentiment vector's calibrated cell (mlux.contrasts)
PER_SIDE, SAMPLES, MAX_TOKENS = 48, 4, 24


def formality_prompts(value: str, n: int, seed: int) -> list[str]:
    """`n` sentence openings that carry formality `value` and no sentiment word."""
    rng = np.random.default_rng(seed)

    def pick(slot: str) -> str:
        words = WORDS[slot]
        return words[rng.integers(len(words))]

    shapes = (lambda: f"{pick('OPEN:' + value)} the {pick('PLACE')} was {pick('INT:' + value)}",
              lambda: f"{pick('TIME')} the {pick('GROUP:' + value)} felt {pick('INT:' + value)}",
              lambda: f"the {pick('PEOPLE')} {pick('SAY:' + value)} that the {pick('PLACE')} was",
              lambda: f"{pick('OPEN:' + value)} it was a")
    return [shapes[i % len(shapes)]() for i in range(n)]


def happy_rate(hooked: HookedModel, prompts: list[str], steering: Steering | None) -> dict:
    scorer = feature_scorer("sentiment", "happy")
    rows = [p for p in prompts for _ in range(SAMPLES)]
    outs = generate_batch(hooked, rows, max_tokens=MAX_TOKENS, temperature=1.0, seed=11,
                          steering=None if steering is None else [steering] * len(rows))
    verdicts = [scorer(hooked.tokenizer.decode(o)) for o in outs]
    labelled = [v for v in verdicts if v is not None]
    happy = sum(labelled)
    lo, hi = wilson_interval(happy, len(labelled))
    return {"rate": happy / len(labelled), "wilson95": [lo, hi], "happy": happy,
            "labelled": len(labelled), "samples": len(rows)}


def main() -> int:
    hooked = HookedModel.from_pretrained("mlux-toy")
    layers = list(range(hooked.num_layers))
    formality = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["formality"], layers)
    sentiment = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"],
                                         [BEHAVIOUR_LAYER])
    search = find_condition_point(hooked, formality_prompts("formal", PER_SIDE, 1),
                                  formality_prompts("casual", PER_SIDE, 2), layers,
                                  vector=formality)
    cond = search.best
    formal, casual = formality_prompts("formal", PER_SIDE, 3), formality_prompts("casual",
                                                                                 PER_SIDE, 4)
    fired = cond.fires(hooked, formal + casual)
    held_out_f1 = f1_score(fired, [True] * len(formal) + [False] * len(casual))
    report: dict = {
        "model": "mlux-toy", "condition": search.to_dict()["best"],
        "search_f1_best": search.best_f1, "held_out_f1": held_out_f1,
        "held_out_fired": {"formal": sum(fired[:len(formal)]) / len(formal),
                           "casual": sum(fired[len(formal):]) / len(casual)},
        "behaviour": {"layer": BEHAVIOUR_LAYER, "alpha": ALPHA, "samples_per_prompt": SAMPLES,
                      "max_tokens": MAX_TOKENS, "prompts_per_side": PER_SIDE},
        "happy_rate": {}}
    arms = {"unsteered": None, "always": Steering(sentiment, ALPHA),
            "if formal": Steering(sentiment, ALPHA, condition=cond),
            "if not formal": Steering(sentiment, ALPHA, condition=cond.flipped())}
    for side, prompts in (("formal", formal), ("casual", casual)):
        report["happy_rate"][side] = {arm: happy_rate(hooked, prompts, s)
                                      for arm, s in arms.items()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, report)
    print(f"condition {report['condition']}: search F1 {search.best_f1:.3f}, held-out F1 "
          f"{held_out_f1:.3f}, fired on {report['held_out_fired']}")
    for side, arms_ in report["happy_rate"].items():
        for arm, r in arms_.items():
            print(f"{side:7} {arm:14} happy {r['rate']:.3f} "
                  f"[{r['wilson95'][0]:.3f}, {r['wilson95'][1]:.3f}] n={r['labelled']}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
