"""Benchmark the cost of steering by SAE feature clamp on the one decoder, side by side in one run.

Ratios of paths run interleaved (order rotated each repeat, after a warm-up) in one process on a
random 4-bit llama (hidden 512, 6 layers, 4k vocab) with a random TopK SAE at residuals_3
(d_sae 8 x 512 = 4096, k 32); nothing here asserts on timing. From the repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/bench_sae.py          # ~1 min on 2 idle cores; --quick: seconds

(a) tokens/s of `generate_batch` (64-token prompt, 32 new tokens, one row) with
    `Steering(sae_clamp=(sae, 7, 10.0))` ÷ unsteered, and ÷ an additive vector at the same layer
    (what clamping costs over the decoder-row vector: one SAE encode per token).
(b) the same with 8 rows, each clamping its own feature, ÷ 8 unsteered rows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import benchkit as bk
import mlx.core as mx

from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.sae import SAEConfig, SparseAutoencoder
from mlux.steering import Steering
from mlux.testing import save_tiny_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_sae.json"
SHAPE = {"hidden_size": 512, "num_layers": 6, "vocab_size": 4096}
PROMPT, NEW = 64, 32


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bk.parser(__doc__, DEFAULT_OUTPUT, quick="a smoke test: tiny model, 2 repeats",
                     repeats="timed repeats per path (default 5)").parse_args(argv)
    shape = {**SHAPE, "hidden_size": 128} if args.quick else SHAPE
    repeats = 2 if args.quick else (args.repeats or 5)
    with tempfile.TemporaryDirectory() as tmp:
        hooked = HookedModel.from_pretrained(str(save_tiny_model(Path(tmp) / "m", "llama",
                                                                 quantize_bits=4, **shape)))
    d = hooked.hidden_size
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=8 * d, k=32,
                                      hook_name="blocks.3.hook_resid_post"), seed=1)
    vector = {3: sae.W_dec[7] * 10.0}
    prompt = [int(t) for t in mx.random.randint(1, 4000, (PROMPT,), key=mx.random.key(0))]

    def run(rows: list[Any]) -> bk.Run:
        return bk.measure(lambda: generate_batch(hooked, [prompt] * len(rows), max_tokens=NEW,
                                                 steering=rows))

    variants = {
        "plain": lambda: run([None]),
        "vector": lambda: run([Steering(vector)]),
        "clamp": lambda: run([Steering(sae_clamp=(sae, 7, 10.0))]),
        "plain x8": lambda: run([None] * 8),
        "clamp x8": lambda: run([Steering(sae_clamp=(sae, f, 10.0)) for f in range(8)]),
    }
    runs = bk.interleaved(variants, repeats, warmup=1)
    speed = bk.per_clock(runs, lambda s: NEW / s)  # tokens/s per row
    ratios = {
        "(a) clamp ÷ unsteered, tokens/s": bk.paired_clocks(speed, "clamp", "plain"),
        "(a) clamp ÷ additive vector, tokens/s": bk.paired_clocks(speed, "clamp", "vector"),
        "(b) 8 rows clamping ÷ 8 unsteered rows, tokens/s": bk.paired_clocks(
            speed, "clamp x8", "plain x8"),
    }
    table = "\n".join([bk.format_header()] + [bk.format_row(k, v) for k, v in ratios.items()])
    result = {**bk.environment("bench_sae.py", list(argv or sys.argv[1:]),
                               {**shape, "quantize_bits": 4, "d_sae": 8 * d, "k": 32},
                               {"prompt_tokens": PROMPT, "new_tokens": NEW,
                                "repeats": repeats}),
              "ratios": ratios, "tokens_per_s": bk.stats_clocks(speed), "table": table}
    bk.write_report(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
