"""Benchmark `HookedModel.capture` (stop at the deepest hook point, never the LM head) against a
plain forward pass, side by side in one process, and `mlux collect` before and after it.

Capture and extraction run on a random 4-bit llama (8 layers, hidden 256, vocab 65536, so the
LM head is most of a forward's work), 8 prompts x 96 tokens per prompt set; the plain forward
is a separate, never-wrapped mlx-lm copy of the model. `mlux collect` runs on the built-in
`mlux-toy` with the shipped config (no completions); "before" is the same collection with
`capture` swapped for the full forward it replaced (`run_with_cache`, logits dropped). Ratios
are medians of paired per-repeat ratios of interleaved runs; nothing here asserts on timing.

    PYTHONPATH=. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_capture.py    # --quick: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import mlx.core as mx
import mlx_lm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import (  # noqa: E402
    environment,
    interleaved,
    measure,
    paired,
    parser,
    per_clock,
    write_report,
)

from mlux import HookedModel, extract_steering_vectors  # noqa: E402
from mlux.collect import collect, load_config  # noqa: E402
from mlux.testing import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "experiments" / "results" / "bench_capture.json"
# (row, numerator, denominator, goal): the headline rows of the capture section
CAPTURE_ROWS = [
    ("capture(['residuals_1']) / plain forward", "capture_residuals_1", "plain_forward", 0.3),
    ("run_with_cache(['residuals_1']) / plain forward (what capture replaces)",
     "run_with_cache_residuals_1", "plain_forward", None),
    ("extract_steering_vectors(layers=[1]) / plain forward of both sets", "extract_layer_1",
     "plain_forward_both", 0.4),
    ("extract_steering_vectors(every layer) / plain forward of both sets", "extract_all_layers",
     "plain_forward_both", 1.0),
]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = parser(__doc__, DEFAULT_OUTPUT, quick="smoke test: a small model, 1 repeat",
               repeats="timed repeats (default 5)")
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 5)
    args.warmup = 0 if q else 1
    args.model = {"type": "llama", "quantize_bits": 4, "hidden_size": 64 if q else 256,
                  "num_layers": 4 if q else 8, "vocab_size": 4096 if q else 65536}
    args.prompts, args.tokens = (2, 16) if q else (8, 96)
    args.collect_per_category = 8 if q else None  # None: the whole shipped prompt file
    return args


@contextlib.contextmanager
def full_forward_capture() -> Iterator[None]:
    """`capture` as it was before: every block and the LM head, logits thrown away."""
    original = HookedModel.capture

    def capture(self: HookedModel, inputs: Any, names: Any = None, *, hooks: Any = None,
                reduce: Any = None) -> dict[str, mx.array]:
        return self.run_with_cache(inputs, names, hooks=hooks, reduce=reduce)[1]

    HookedModel.capture = capture  # type: ignore[method-assign]
    try:
        yield
    finally:
        HookedModel.capture = original  # type: ignore[method-assign]


def _drop_result(run: tuple) -> tuple:
    """Timings and memory only: peak and what was in use at the start (both models' weights)."""
    return run[0], run[1], {k: run[2][k] for k in ("peak_bytes", "active_bytes")}


def _summary(runs: dict[str, list], rows: list[tuple], unit: Callable[[float], float] = float
             ) -> dict[str, Any]:
    sec = per_clock(runs, unit)
    return {
        "ratios": {c: {label: paired(t[num], t[den], ("<=", goal) if goal else None)
                       for label, num, den, goal in rows} for c, t in sec.items()},
        "seconds": per_clock(runs),
        # peak MLX memory above what was in use when the run started (the weights)
        "peak_mb": {k: statistics.median(r[2]["peak_bytes"] - r[2]["active_bytes"] for r in v)
                    / 2**20 for k, v in runs.items()},
        "peak_total_mb": {k: statistics.median(r[2]["peak_bytes"] for r in v) / 2**20
                          for k, v in runs.items()},
    }


def bench_capture(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    m = args.model
    model_dir = save_tiny_model(work / "model", m["type"], quantize_bits=m["quantize_bits"],
                                hidden_size=m["hidden_size"], num_layers=m["num_layers"],
                                vocab_size=m["vocab_size"])
    plain, _ = mlx_lm.load(str(model_dir))  # never wrapped
    hooked = HookedModel.from_pretrained(str(model_dir))
    rng = mx.random.key(0)
    ids = mx.random.randint(7, m["vocab_size"], (2 * args.prompts, args.tokens), key=rng)
    texts = [" ".join(f"w{i}" for i in row) for row in ids.tolist()]  # word w{i} = token i
    assert all(len(hooked.tokenizer.encode(t)) == args.tokens for t in texts)
    pos, neg, first = texts[:args.prompts], texts[args.prompts:], ids[:args.prompts]

    def run(fn: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: _drop_result(measure(fn))

    variants = {
        "plain_forward": run(lambda: plain(first)),
        "capture_residuals_1": run(lambda: hooked.capture(first, ["residuals_1"])),
        "run_with_cache_residuals_1": run(lambda: hooked.run_with_cache(first, ["residuals_1"])),
        "plain_forward_both": run(lambda: plain(ids)),
        "extract_layer_1": run(lambda: extract_steering_vectors(hooked, pos, neg, [1])),
        "extract_all_layers": run(lambda: extract_steering_vectors(hooked, pos, neg, "all")),
    }
    out = _summary(interleaved(variants, args.repeats, args.warmup), CAPTURE_ROWS)
    with full_forward_capture():  # the patch the collect section uses really is the old path
        old = extract_steering_vectors(hooked, pos, neg, "all")
    new = extract_steering_vectors(hooked, pos, neg, "all")
    out["extraction_identical_to_full_forward"] = all(
        mx.array_equal(old[i], new[i]).item() for i in new)
    return out


def bench_collect(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    hooked = HookedModel.from_pretrained("mlux-toy")
    base = load_config(REPO / "configs" / "models" / "mlux-toy.yaml")
    base = base.replace("inference", max_new_tokens=0).replace(
        "data", path=str(REPO / "configs" / "data" / "toy_prompts.jsonl"),
        max_samples_per_category=args.collect_per_category)
    layer_sets = {"shipped": list(base.model.activation_layers), "shallow": ["residuals_1"]}
    counter, prompts = [0], {}

    def collection(name: str, layers: list[str], before: bool) -> Callable[[], Any]:
        def go() -> Any:
            counter[0] += 1
            out = work / f"collect{counter[0]}"
            cfg = base.replace("model", activation_layers=layers).replace(
                "output", result_dir=str(out))
            with full_forward_capture() if before else contextlib.nullcontext():
                r = measure(lambda: collect(cfg, hooked=hooked, progress=False,
                                            echo=lambda s: None))
            prompts[name] = sum(c["num_samples"] for c in
                                r[2]["result"].manifest.data["categories"].values())
            shutil.rmtree(out)
            return _drop_result(r)
        return go

    variants = {f"{k}_{when}": collection(k, layers, when == "before")
                for k, layers in layer_sets.items() for when in ("before", "after")}
    runs = interleaved(variants, args.repeats, args.warmup)
    n = prompts["shipped"]
    rows = [(f"collect {k} ({', '.join(v)}): prompts/s after / before", f"{k}_after",
             f"{k}_before", None) for k, v in layer_sets.items()]
    out = _summary(runs, rows, lambda s: n / s)  # ratios of prompts/s: > 1 is faster
    out["prompts_per_second"] = {c: {k: statistics.median(v) for k, v in t.items()}
                                 for c, t in per_clock(runs, lambda s: n / s).items()}
    out["prompts"], out["layer_sets"] = n, layer_sets
    return out


def table(result: dict[str, Any]) -> str:
    lines = ["| measurement | ratio (wall) | ratio (cpu) | peak MB above weights (this / "
             "baseline) | goal |",
             "|---|---|---|---|---|"]
    cap, col = result["capture"], result["collect"]
    for label, num, den, goal in CAPTURE_ROWS:
        w, c = (cap["ratios"][k][label]["median"] for k in ("wall", "cpu"))
        peak = f"{cap['peak_mb'][num]:.1f} / {cap['peak_mb'][den]:.1f}"
        lines.append(f"| {label} | {w:.3f} | {c:.3f} | {peak} | "
                     f"{'<= ' + str(goal) if goal else '-'} |")
    pps = col["prompts_per_second"]["wall"]
    for k in col["layer_sets"]:
        label = next(lb for lb in col["ratios"]["wall"] if lb.startswith(f"collect {k} "))
        w, c = (col["ratios"][clk][label]["median"] for clk in ("wall", "cpu"))
        lines.append(f"| {label} ({pps[f'{k}_before']:.0f} -> {pps[f'{k}_after']:.0f}) | "
                     f"{w:.3f} | {c:.3f} | {col['peak_mb'][f'{k}_after']:.1f} / "
                     f"{col['peak_mb'][f'{k}_before']:.1f} | - |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    settings = {"prompts_per_set": args.prompts, "tokens_per_prompt": args.tokens,
                "plain_forward": "never-wrapped mlx-lm copy; one set (B=prompts) or both sets "
                "(B=2*prompts) as one batch, pre-tokenized, logits evaluated",
                "repeats": args.repeats, "warmup": args.warmup,
                "collect_model": "mlux-toy", "collect_config": "configs/models/mlux-toy.yaml "
                "with max_new_tokens 0", "collect_samples_per_category": args.collect_per_category}
    result = environment("bench_capture.py", argv, args.model, settings)
    try:
        result["capture"] = bench_capture(args, work)
        result["collect"] = bench_collect(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["table"] = table(result)
    write_report(args.output, result)
    return result


if __name__ == "__main__":
    main()
