"""Benchmark activation collection against one plain forward pass, side by side on one model.

Throughput is prompt tokens per second over the same prompts and batch size. The baseline is the
unwrapped mlx-lm model (its own copy, no hook wrappers) running the same left-padded masked
batches; the collection rows capture every residual layer. Variants run interleaved (order
rotated each repeat, after a warm-up) in one process, and each ratio is the median of per-repeat
ratios, so the numbers travel across machines; nothing here asserts on timing. From the repo root:

    PYTHONPATH=. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_collect.py    # ~6 min on 2 cores; --quick: a smoke test
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
import mlx_lm
import numpy as np

from mlux.atomic import atomic_write_json
from mlux.collect import collect, config_from_dict
from mlux.inputs import make_batch_cache
from mlux.model import HookedModel
from mlux.testing import save_tiny_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_collect.json"
BASELINE = "plain_forward"
CLOCKS = ("wall", "cpu")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--quick", action="store_true", help="smoke test: hidden 128, few prompts")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    p.add_argument("--prompts", type=int, default=None, help="default 16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hidden-size", type=int, default=None, help="default 512")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=4096)
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 5)
    args.prompts = args.prompts or (4 if q else 16)
    args.hidden_size = args.hidden_size or (128 if q else 512)
    args.lengths = (4, 8) if q else (16, 32)  # shortest, longest prompt in words (= tokens)
    return args


def make_prompts(n: int, lengths: tuple[int, int], vocab: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)
    return [{"text": " ".join(f"w{w}" for w in rng.integers(7, vocab, rng.integers(
        lengths[0], lengths[1] + 1))), "category": "ab"[i % 2]} for i in range(n)]


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process-CPU seconds; CPU time is less disturbed by other jobs on the machine."""
    mx.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    mx.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int
                ) -> dict[str, dict[str, list[float]]]:
    """One untimed warm-up of every variant, then `repeats` rounds in rotated order;
    returns {clock: {variant: [seconds per repeat]}}."""
    names = list(variants)
    for n in names:
        variants[n]()
    out: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in CLOCKS}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            for c, s in zip(CLOCKS, timed(variants[n]), strict=True):
                out[c][n].append(s)
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_collect_"))
    try:
        return _run(args, work, list(argv) if argv is not None else sys.argv[1:])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, argv: list[str]) -> dict[str, Any]:
    model_dir = save_tiny_model(work / "model", "llama", quantize_bits=4,
                                hidden_size=args.hidden_size, num_layers=args.layers,
                                vocab_size=args.vocab_size)
    plain, tokenizer = mlx_lm.load(str(model_dir))  # a separate, never-wrapped copy
    hooked = HookedModel.from_pretrained(str(model_dir))
    rows = make_prompts(args.prompts, args.lengths, args.vocab_size)
    data = work / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ids = [tokenizer.encode(r["text"]) for r in rows]
    n_tokens = sum(len(r) for r in ids)
    bs = args.batch_size
    batches = []
    for s in range(0, len(ids), bs):
        chunk = ids[s:s + bs]
        width = max(len(r) for r in chunk)
        batches.append((mx.array([[0] * (width - len(r)) + r for r in chunk]),
                        [width - len(r) for r in chunk]))

    def plain_forward() -> None:
        for tokens, pad in batches:
            mx.eval(plain(tokens, cache=make_batch_cache(plain, pad)))

    def capture_only() -> None:  # hooks, no disk: what the hooks cost by themselves
        for s in range(0, len(ids), bs):
            hooked.run_with_cache(ids[s:s + bs], "all", reduce=lambda x: x[:, -1])

    runs = [0]

    def collect_with(positions: list[str]) -> Callable[[], None]:
        def go() -> None:
            runs[0] += 1
            cfg = config_from_dict({
                "model": {"name": str(model_dir), "activation_layers": "all"},
                "inference": {"batch_size": bs, "positions": positions},
                "data": {"path": str(data)},
                "output": {"result_dir": str(work / f"out{runs[0]}"), "shard_size": 64}})
            collect(cfg, hooked=hooked, progress=False, echo=lambda s: None)
            shutil.rmtree(work / f"out{runs[0]}")
        return go

    variants = {BASELINE: plain_forward, "capture_all_residuals_in_memory": capture_only,
                "collect_all_residuals_last_token": collect_with(["last"]),
                "collect_all_residuals_every_token": collect_with(["all"])}
    seconds = interleaved(variants, args.repeats)
    table = []
    for k in variants:
        row: dict[str, Any] = {"variant": k}
        for c in CLOCKS:
            tps = [n_tokens / s for s in seconds[c][k]]
            base = [n_tokens / s for s in seconds[c][BASELINE]]
            ratios = [a / b for a, b in zip(tps, base, strict=True)]  # paired per repeat
            row[c] = {"tokens_per_second": statistics.median(tps),
                      "ratio_vs_plain": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios)}
        table.append(row)
    report = {
        "command": ["python", "experiments/bench_collect.py", *argv],
        "versions": {p: md.version(p) for p in ("mlx", "mlx-lm", "numpy")},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "python": platform.python_version()},
        "model": {"type": "llama (random, mlux.testing.save_tiny_model)", "bits": 4,
                  "hidden_size": args.hidden_size, "layers": args.layers,
                  "vocab_size": args.vocab_size},
        "settings": {"prompts": args.prompts, "prompt_tokens": n_tokens, "batch_size": bs,
                     "prompt_lengths": list(args.lengths), "repeats": args.repeats,
                     "hook_points": args.layers, "baseline": "unwrapped mlx-lm model, same "
                     "left-padded masked batches, pre-tokenized, logits evaluated",
                     "collect_includes": "reading the JSONL, tokenizing, plan, shards and "
                     "manifest written to disk"},
        "seconds": seconds, "table": table,
    }
    _print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    print(f"wrote {args.output}")
    return report


def _print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"{s['prompts']} prompts, {s['prompt_tokens']} tokens, batch {s['batch_size']}, "
          f"{s['repeats']} repeats; model: random 4-bit llama, hidden "
          f"{report['model']['hidden_size']}, {report['model']['layers']} layers")
    print("throughput in prompt tokens/s; ratio = median of paired per-repeat ratios "
          "(min-max) vs plain_forward")
    print(f"{'variant':<36} " + " ".join(f"{c + ' tok/s':>10} {'ratio (min-max)':<20}"
                                         for c in CLOCKS))
    for row in report["table"]:
        cells = [f"{row[c]['tokens_per_second']:>10.1f} {row[c]['ratio_vs_plain']:>6.3f} "
                 f"({row[c]['ratio_min']:.3f}-{row[c]['ratio_max']:.3f})" for c in CLOCKS]
        print(f"{row['variant']:<36} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
