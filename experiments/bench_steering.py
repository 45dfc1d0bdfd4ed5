"""Benchmark mlux's steering overhead against plain mlx-lm, side by side on one model.

Every number is a ratio between paths run interleaved (A, B, A, B, ... with the order rotated each
repeat, after a warm-up) in one process on one random 4-bit llama, so results travel across
machines; nothing here asserts on timing. Run from the repository root:

    PYTHONPATH=. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_steering.py    # ~7 min on 2 idle cores; --quick: a smoke test

Decode speed is timed identically for every path, by this script: (tokens - 1) / time from the
first yielded token to the last (prefill excluded); mlx-lm's own `generation_tps` is kept for
reference. Each run is timed twice: wall clock (the headline) and process CPU time, which other
processes sharing the cores do not inflate; goals are checked on both. The `control` row times
plain mlx-lm against itself: its spread is the noise floor of the run.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import mlx.core as mx
import mlx_lm

import mlux
from mlux.atomic import atomic_write_json
from mlux.testing import save_tiny_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_steering.json"
STEER_LAYERS = (1, 2, 3)
ALPHA = 2.0
NEVER_EOS = {-1}  # an id no model emits: EOS must never cut a run short
CLOCKS = ("wall", "cpu")
Run = tuple[float, float, dict[str, Any]]  # (wall seconds, cpu seconds, extras)
DECODE_GOALS = {"control_plain_again": None, "wrapped_no_hooks_mlx_lm": 0.99,
                "mlux_no_hooks": None, "idle_hooks_3_layers": 0.99, "steered_3_layers": 0.97}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 repeat, few tokens, hidden size 128 unless given")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats of the decode rows (extraction and prefill use fewer)")
    p.add_argument("--hidden-size", type=int, default=None, help="default 512")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=4096)
    args = p.parse_args(argv)
    q = args.quick
    # 4-bit matmuls run at ~1 GFLOP/s on CPU (no BLAS), so a prompt token costs about as much
    # as a decode step: the prompt-heavy rows get fewer repeats.
    args.repeats = args.repeats or (1 if q else 9)
    args.extraction_repeats = max(1, (5 * args.repeats) // 9)
    args.prefill_repeats = max(1, (3 * args.repeats) // 9)
    args.hidden_size = args.hidden_size or (128 if q else 512)
    args.warmup = 1
    args.decode_prompt, args.decode_tokens = (8, 8) if q else (32, 128)
    args.extraction_lengths = (3, 6) if q else (8, 15)  # shortest, longest prompt
    args.prefill_prompt, args.continuations = (32, 4) if q else (256, 8)
    args.continuation_tokens = 4 if q else 16
    return args


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], extras: Optional[dict[str, Any]] = None,
          t1: Optional[tuple[float, float]] = None) -> Run:
    t1 = t1 or clock()
    return t1[0] - t0[0], t1[1] - t0[1], extras or {}


def interleaved(variants: dict[str, Callable[[], Run]], repeats: int, warmup: int
                ) -> dict[str, list[Run]]:
    """Run every variant `warmup` times untimed, then `repeats` times, rotating the order so no
    variant always runs first or right after the same neighbour."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    runs: dict[str, list[Run]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            mx.synchronize()  # mlx-lm queues one step past max_tokens; let it finish untimed
            runs[n].append(variants[n]())
    return runs


def timed_stream(items: Iterable[Any]) -> Run:
    """Drain a stream of token ids (or mlx-lm responses), timing it from the first token to the
    last (not to the end of the generator, whose clean-up is no part of decoding)."""
    out, stamps = [], []
    for item in items:
        stamps.append(clock())
        out.append(item)
    tokens = [int(getattr(x, "token", x)) for x in out]
    return since(stamps[0], {"tokens": tokens, "last": out[-1]}, stamps[-1])


def stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def paired(num: list[float], den: list[float], target: Optional[tuple[str, float]] = None
           ) -> dict[str, Any]:
    """Median of per-repeat ratios (paired, so slow drift of the machine cancels), its spread,
    and whether it meets `target` = (">=" or "<=", value)."""
    out = stats([a / b for a, b in zip(num, den, strict=True)])
    out["goal"] = None
    if target is not None:
        op, value = target
        met = out["median"] >= value if op == ">=" else out["median"] <= value
        out["goal"] = {"op": op, "value": value, "met": met}
    return out


def per_clock(runs: dict[str, list[Run]], f: Callable[[float], float] = float
              ) -> dict[str, dict[str, list[float]]]:
    """{clock: {variant: [f(seconds) per repeat]}}."""
    return {c: {k: [f(r[i]) for r in v] for k, v in runs.items()} for i, c in enumerate(CLOCKS)}


def bench_decode(plain: Any, plain_tok: Any, hooked: mlux.HookedModel, vectors: dict[int, mx.array],
                 args: argparse.Namespace) -> dict[str, Any]:
    prompt = [7 + (13 * i) % (args.vocab_size - 8) for i in range(args.decode_prompt)]
    n, n_tok = len(prompt), args.decode_tokens
    # Idle: prompt-only steering returns None at every decode step.
    idle = [(f"residuals_{i}", mlux.create_steering_hook(vectors[i], ALPHA, positions="prompt",
                                                         prompt_length=n)) for i in STEER_LAYERS]
    steer = mlux.steering_hooks({i: vectors[i] for i in STEER_LAYERS}, ALPHA)

    def mlx_lm_run(model: Any, tok: Any) -> Run:
        return timed_stream(mlx_lm.stream_generate(model, tok, prompt, max_tokens=n_tok))

    def mlux_run(hooks: Any) -> Run:
        cache, logits = mlux.prefill_with_cache(hooked, prompt)
        return timed_stream(mlux.stream_from_cache(hooked, cache, logits, max_tokens=n_tok,
                                                   hooks=hooks))

    runs = interleaved({
        "plain_mlx_lm": lambda: mlx_lm_run(plain, plain_tok),
        "control_plain_again": lambda: mlx_lm_run(plain, plain_tok),
        "wrapped_no_hooks_mlx_lm": lambda: mlx_lm_run(hooked.model, hooked.tokenizer),
        "mlux_no_hooks": lambda: mlux_run(None),
        "idle_hooks_3_layers": lambda: mlux_run(idle),
        "steered_3_layers": lambda: mlux_run(steer),
    }, args.repeats, args.warmup)
    counts = {k: sorted({len(r[2]["tokens"]) for r in v}) for k, v in runs.items()}
    if any(c != [n_tok] for c in counts.values()):  # correctness, not timing: rates need equal n
        raise RuntimeError(f"token counts differ between paths: {counts}")
    tps = per_clock(runs, lambda s: (n_tok - 1) / s)
    greedy = {k: v[0][2]["tokens"] for k, v in runs.items()}
    return {
        "prompt_tokens": n, "new_tokens": n_tok, "steer_layers": list(STEER_LAYERS),
        "alpha": ALPHA, "timing": "(new_tokens - 1) / seconds from first to last yielded token",
        "tokens_per_second": {c: {k: stats(v) for k, v in t.items()} for c, t in tps.items()},
        "mlx_lm_generation_tps": {k: [r[2]["last"].generation_tps for r in v]
                                  for k, v in runs.items() if "mlx_lm" in k or "plain" in k},
        "unsteered_tokens_identical": all(greedy[k] == greedy["plain_mlx_lm"] for k in greedy
                                          if k != "steered_3_layers"),
        "steering_changed_tokens": greedy["steered_3_layers"] != greedy["mlux_no_hooks"],
        # vs plain mlx_lm.stream_generate on the unwrapped copy
        "ratios": {c: {k: paired(t[k], t["plain_mlx_lm"], (">=", g) if g else None)
                       for k, g in DECODE_GOALS.items()} for c, t in tps.items()},
        # the hooks' own cost, with mlux's generator on both sides
        "ratios_vs_mlux_no_hooks": {c: {k: paired(t[k], t["mlux_no_hooks"]) for k in
                                        ("idle_hooks_3_layers", "steered_3_layers")}
                                    for c, t in tps.items()},
    }


def bench_extraction(hooked: mlux.HookedModel, args: argparse.Namespace) -> dict[str, Any]:
    lo, hi = args.extraction_lengths

    def prompt(i: int, base: int) -> str:  # lengths lo..hi, so the batch really is left-padded
        return " ".join(f"w{base + (7 * i + j) % 500}" for j in range(lo + i * (hi - lo) // 7))

    pos = [prompt(i, 100) for i in range(8)]
    neg = [prompt(i, 1000) for i in range(8)]
    batch = hooked.tokenize(pos + neg)

    def extract() -> Run:
        t0 = clock()
        mlux.extract_steering_vectors(hooked, pos, neg, "all")
        return since(t0)

    def forward(masked: bool) -> Run:
        t0 = clock()
        mx.eval(hooked.forward(batch) if masked else hooked.model(batch.tokens))
        return since(t0)

    variants = {"extract_all_layers": extract, "plain_forward": lambda: forward(False),
                "masked_forward": lambda: forward(True)}
    sec = per_clock(interleaved(variants, args.extraction_repeats, args.warmup))
    return {
        "prompts": 16, "batch_shape": list(batch.tokens.shape), "layers": hooked.num_layers,
        "baseline": "hooked.model(tokens) + mx.eval on the same 16 padded rows",
        "seconds": {c: {k: stats(v) for k, v in t.items()} for c, t in sec.items()},
        "ratio": {c: paired(t["extract_all_layers"], t["plain_forward"], ("<=", 1.3))
                  for c, t in sec.items()},
        # Extraction runs the masked (BatchKVCache) forward; this splits masking from hooks.
        "ratio_vs_masked_forward": {c: paired(t["extract_all_layers"], t["masked_forward"])
                                    for c, t in sec.items()},
    }


def bench_shared_prefill(hooked: mlux.HookedModel, vectors: dict[int, mx.array],
                         args: argparse.Namespace) -> dict[str, Any]:
    prompt = [7 + (31 * i) % (args.vocab_size - 8) for i in range(args.prefill_prompt)]
    k, n_tok = args.continuations, args.continuation_tokens
    hooks = [mlux.steering_hooks({i: vectors[i] for i in STEER_LAYERS}, 0.5 * j) for j in range(k)]

    def shared() -> Run:
        t0 = clock()
        cache, logits = mlux.prefill_with_cache(hooked, prompt)
        t1 = clock()
        outs = [mlux.generate_from_cache(hooked, cache, logits, max_tokens=n_tok, hooks=h)
                for h in hooks]
        return since(t0, {"outs": outs, "prefill": t1[0] - t0[0]})

    def separate() -> Run:
        t0, outs = clock(), []
        for h in hooks:
            cache, logits = mlux.prefill_with_cache(hooked, prompt)
            outs.append(mlux.generate_from_cache(hooked, cache, logits, max_tokens=n_tok, hooks=h))
        return since(t0, {"outs": outs})

    shared()  # warm-up: the separate path makes the very same calls, k times over
    runs = interleaved({"shared_prefill": shared, "separate_prefills": separate},
                       args.prefill_repeats, warmup=0)
    sec = per_clock(runs)
    p = statistics.median(r[2]["prefill"] for r in runs["shared_prefill"])
    g = (statistics.median(sec["wall"]["shared_prefill"]) - p) / k
    return {
        "prompt_tokens": len(prompt), "continuations": k, "new_tokens_each": n_tok,
        "seconds": {c: {n: stats(v) for n, v in t.items()} for c, t in sec.items()},
        "ratio": {c: paired(t["shared_prefill"], t["separate_prefills"]) for c, t in sec.items()},
        # The best sharing can do, from the shared run's own prefill / continuation split.
        "ideal_ratio": (p + k * g) / (k * (p + g)),
        "outputs_identical": runs["shared_prefill"][0][2]["outs"]
        == runs["separate_prefills"][0][2]["outs"],
    }


def table(res: dict[str, Any]) -> str:
    def row(what: str, r: dict[str, dict[str, Any]]) -> str:
        w, g, gs = r["wall"], r["wall"]["goal"], "-"
        if g:
            met = ", ".join(f"{c} {'met' if r[c]['goal']['met'] else 'MISSED'}" for c in CLOCKS)
            gs = f"{g['op']} {g['value']:.2f}: {met}"
        return (f"{what:<48} {w['median']:>6.3f} [{w['min']:.3f}, {w['max']:.3f}] "
                f"{r['cpu']['median']:>6.3f}  {gs}")

    d, e, s = res["decode"], res["extraction"], res["shared_prefill"]
    tps = d["tokens_per_second"]["wall"]["plain_mlx_lm"]["median"]
    lines = [f"{'ratio (median of paired repeats)':<48} {'wall':>6} [min,   max  ] "
             f"{'cpu':>6}  goal",
             f"decode tok/s vs plain mlx_lm.stream_generate ({tps:.1f} tok/s wall):"]
    labels = {"control_plain_again": "  control: plain mlx-lm again (noise floor)",
              "wrapped_no_hooks_mlx_lm": "  (a) HookedModel, no hooks, stream_generate",
              "mlux_no_hooks": "      stream_from_cache, no hooks (reference)",
              "idle_hooks_3_layers": "  (b) idle hooks on 3 layers, stream_from_cache",
              "steered_3_layers": "  (c) 3 layers steered, stream_from_cache"}
    ratios = d["ratios"]
    lines += [row(label, {c: ratios[c][k] for c in CLOCKS}) for k, label in labels.items()]
    lines.append(row("extraction time / one plain forward (16 rows)", e["ratio"]))
    lines.append(row("  (same, / masked padded forward)", e["ratio_vs_masked_forward"]))
    lines.append(row(f"shared prefill / {s['continuations']} separate "
                     f"(ideal {s['ideal_ratio']:.3f})", s["ratio"]))
    return "\n".join(lines)


def environment(argv: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        # The equivalent command line from the repository root (main() may be called directly).
        "command": ["python", "experiments/bench_steering.py", *argv],
        "versions": {"python": platform.python_version(), "executable": sys.executable,
                     "mlx": mx.__version__, "mlx_lm": md.version("mlx-lm"),
                     "mlux": mlux.__version__, "mlux_git": commit},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "device": str(mx.default_device()),
                    "ld_preload": os.environ.get("LD_PRELOAD"),
                    # Other processes may share the cores: see the control row and cpu ratios.
                    "loadavg_1_5_15_at_start": list(os.getloadavg())},
        "model": {"model_type": "llama", "quantize_bits": 4, "hidden_size": args.hidden_size,
                  "num_layers": args.layers, "vocab_size": args.vocab_size,
                  "source": "mlux.testing.save_tiny_model (random weights), mlx_lm.load"},
        "settings": {k: getattr(args, k) for k in (
            "quick", "repeats", "extraction_repeats", "prefill_repeats", "warmup")},
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlux-bench-") as tmp:
        save_tiny_model(tmp, "llama", quantize_bits=4, hidden_size=args.hidden_size,
                        num_layers=args.layers, vocab_size=args.vocab_size)
        # Two loads of the same files: the plain copy is never wrapped.
        plain, plain_tok = mlx_lm.load(tmp)
        model, tok = mlx_lm.load(tmp)
    for t in (plain_tok, tok):
        t.eos_token_ids = NEVER_EOS
    hooked = mlux.HookedModel(model, tok)
    pos = [" ".join(f"w{100 + 3 * i + j}" for j in range(8)) for i in range(8)]
    neg = [" ".join(f"w{2000 + 5 * i + j}" for j in range(8)) for i in range(8)]
    vectors = mlux.extract_steering_vectors(hooked, pos, neg, "all")
    result = environment(argv, args)
    result["decode"] = bench_decode(plain, plain_tok, hooked, vectors, args)
    result["extraction"] = bench_extraction(hooked, args)
    result["shared_prefill"] = bench_shared_prefill(hooked, vectors, args)
    result["machine"]["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    result["table"] = table(result)
    print(result["table"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
