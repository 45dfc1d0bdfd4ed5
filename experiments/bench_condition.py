"""Benchmark conditional steering: what deciding a condition in the prefill costs.

A batch of 8 prompts (64 tokens each) on a random 4-bit llama (hidden 512, 6 layers, 4k vocab),
steered at layer 3 (alpha 2), generated as one batch by `generate_batch`:

- `plain`: an unconditional term on the window `"generated"` (what a fired condition gives);
- `conditional`: the same term gated by a condition at layer 1 that fires on every prompt
  (threshold -1, comparator "larger"), so both do the same steering and differ only by the
  decision (the prefill's recording hook, the gate, the resolution after the prefill);
- `unsteered`, for scale.

Ratios `conditional / plain`, end to end (prefill + 32 new tokens) and prefill only (1 new
token); interleaved repeats, paired ratios, wall and cpu clocks. Nothing asserts on timing. Run
from the repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/bench_condition.py    # ~1 min on 2 idle cores; --quick: seconds
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import benchkit as bk
import mlx.core as mx

from mlux import Condition, HookedModel, Steering, generate_batch

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_condition.json"
LAYER, CONDITION_LAYER = 3, 1


def cell(hooked: HookedModel, prompts: list[list[int]], terms: dict[str, Optional[Steering]],
         tokens: int, repeats: int) -> dict[str, Any]:
    def run(term: Optional[Steering]) -> Any:
        rows = None if term is None else [term] * len(prompts)
        return lambda: bk.measure(lambda: generate_batch(hooked, prompts, max_tokens=tokens,
                                                         steering=rows))

    runs = bk.interleaved({k: run(t) for k, t in terms.items()}, repeats, warmup=1)
    sec = bk.per_clock(runs)
    return {"new_tokens": tokens, "seconds": bk.stats_clocks(sec),
            "conditional_over_plain": bk.paired_clocks(sec, "conditional", "plain", ("<=", 1.05)),
            "plain_over_unsteered": bk.paired_clocks(sec, "plain", "unsteered"),
            # greedy: a condition that fires on every row gives the plain term's tokens
            "outputs_identical": runs["conditional"][0][2]["result"]
            == runs["plain"][0][2]["result"]}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bk.parser(__doc__, DEFAULT_OUTPUT, quick="small settings for a smoke test"
                     ).parse_args(argv)
    tokens, repeats, rows, width = (4, 1, 2, 16) if args.quick else (32, 5, 8, 64)
    hooked, model = bk.random_llama(args.quick)
    prompts = [[5 + (r * 7 + k) % 90 for k in range(width)] for r in range(rows)]
    d = hooked.hidden_size
    vector = mx.random.normal((d,), key=mx.random.key(0)) * 0.05
    always = Condition(mx.random.normal((d,), key=mx.random.key(1)), CONDITION_LAYER, -1.0)
    terms = {"unsteered": None,
             "plain": Steering(vector, 2.0, [LAYER], "generated"),
             "conditional": Steering(vector, 2.0, [LAYER], condition=always)}
    result = bk.environment("bench_condition.py", argv, model,
                            {"quick": args.quick, "repeats": repeats, "rows": rows,
                             "prompt_tokens": width, "layer": LAYER,
                             "condition_layer": CONDITION_LAYER})
    result["end_to_end"] = cell(hooked, prompts, terms, tokens, repeats)
    result["prefill"] = cell(hooked, prompts, terms, 1, repeats)
    lines = [bk.format_header()]
    for part in ("end_to_end", "prefill"):
        r = result[part]
        lines.append(bk.format_row(f"{part}: conditional / plain", r["conditional_over_plain"]))
        lines.append(bk.format_row(f"{part}: plain / unsteered", r["plain_over_unsteered"]))
        lines.append(f"{part}: outputs identical: {r['outputs_identical']}")
    result["table"] = "\n".join(lines)
    bk.write_report(args.output, result)
    return result


if __name__ == "__main__":
    main()
