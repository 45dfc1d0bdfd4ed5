"""Benchmark mlux's steering cost against plain mlx-lm, end to end, side by side in one run.

Every number is a ratio between paths run interleaved (order rotated each repeat, after a warm-up)
in one process on random 4-bit llamas, so results travel across machines; nothing here asserts
on timing. Runs are timed on the wall clock (the headline) and in process CPU time (which other
processes sharing the cores do not inflate); goals are checked on both. The `control` rows time
plain mlx-lm against itself: their spread is the noise floor. From the repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_steering.py    # ~5 min on 2 idle cores; --quick: seconds

(a) End to end, as the user waits: tokens/s = new tokens / seconds from the call to the last
    token (prefill included) ÷ plain `mlx_lm.stream_generate` on an unwrapped copy of the model
    (hidden 512, 6 layers, 4k vocab; 64-token prompt, 32 new tokens, layers 1-3 steered at
    alpha 2). EOS is an id never emitted, so every run makes exactly 32 tokens.
(b) The same on a 64k-vocabulary model (hidden 256, 4 layers): the LM head is a real cost.
(c) A 1024-token prefill on the 64k model: peak MLX memory and time of `prefill_with_cache` ÷
    mlx-lm's (`generate_step(prompt, model, max_tokens=1)`'s first token; the decode step it
    queues before yielding it counts on its side).
(d) Decode only (prefill excluded): (new tokens - 1) / seconds from the first yielded token to
    the last, from the runs of (a) and (b).
(e) Extraction of every layer ÷ one plain forward; k steered continuations of one prompt as one
    batch (positions "generated": one shared prefill) ÷ k separate `generate_batch` calls.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import benchkit as bk
import mlx.core as mx
import mlx_lm

import mlux
from mlux.generate import generate_batch
from mlux.prefill import PREFILL_CHUNK
from mlux.steering import Steering
from mlux.testing import save_tiny_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_steering.json"
STEER_LAYERS = [1, 2, 3]
ALPHA = 2.0
NEVER_EOS = {-1}  # an id no model emits: EOS must never cut a run short
MLX_LM_GENERATE = importlib.import_module("mlx_lm.generate")  # `mlx_lm.generate` is a function
BASE = "plain_mlx_lm"
LABELS = {  # path -> table label; end-to-end goal; decode-only goal
    "control_plain_again": ("control: plain mlx-lm again (noise floor)", None, None),
    "wrapped_no_hooks_mlx_lm": ("HookedModel, no hooks, mlx_lm.stream_generate", None, 0.99),
    "mlux_no_hooks": ("mlux, no hooks: prefill_with_cache+stream_from_cache", None, None),
    "idle_hooks_3_layers": ("mlux, idle hooks on 3 layers (prompt-only steering)", None, 0.99),
    "steered_3_layers": ("mlux, 3 layers steered: prefill+stream, hooks=", 0.97, 0.97),
    "steered_generate_batch": ("3 layers steered: generate_batch (Decoder.insert)", 0.97, None),
}
PATHS = (BASE, *LABELS)  # (a); (b) skips the idle hooks and the wrapped model under mlx-lm
BIG_VOCAB_PATHS = tuple(k for k in PATHS if k not in ("wrapped_no_hooks_mlx_lm",
                                                      "idle_hooks_3_layers"))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = bk.parser(__doc__, DEFAULT_OUTPUT, quick="smoke test: tiny shapes, 1 repeat",
                  repeats="of the generation rows (9)")
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 9)  # prefill rows a third, extraction 5/9
    args.prefill_repeats = max(1, args.repeats // 3)
    args.extraction_repeats = max(1, (5 * args.repeats) // 9)
    args.warmup = 1
    args.model = {"hidden_size": 128 if q else 512, "num_layers": 6, "vocab_size": 4096}
    args.big_vocab_model = {"hidden_size": 64 if q else 256, "num_layers": 4,
                            "vocab_size": 16384 if q else 65536}
    args.prompt_tokens, args.new_tokens = (8, 8) if q else (64, 32)
    args.memory_prompt_tokens = 64 if q else 1024
    args.extraction_lengths = (3, 6) if q else (8, 15)  # shortest, longest prompt
    args.shared_prompt_tokens, args.continuations = (32, 4) if q else (256, 8)
    args.continuation_tokens = 4 if q else 16
    return args


class Pair(NamedTuple):
    """Two loads of one model: `plain` is never wrapped, `hooked` wraps the other."""

    plain: Any
    plain_tok: Any
    hooked: mlux.HookedModel
    vectors: mlux.SteeringVector  # at STEER_LAYERS, from extract_steering_vectors
    vocab_size: int


def load_pair(shape: dict[str, int]) -> Pair:
    with tempfile.TemporaryDirectory(prefix="mlux-bench-") as tmp:
        save_tiny_model(tmp, "llama", quantize_bits=4, **shape)
        plain, plain_tok = mlx_lm.load(tmp)
        model, tok = mlx_lm.load(tmp)
    for t in (plain_tok, tok):
        t.eos_token_ids = NEVER_EOS
    hooked = mlux.HookedModel(model, tok)
    pos = [" ".join(f"w{100 + 3 * i + j}" for j in range(8)) for i in range(8)]
    neg = [" ".join(f"w{2000 + 5 * i + j}" for j in range(8)) for i in range(8)]
    vectors = mlux.extract_steering_vectors(hooked, pos, neg, "all").select(STEER_LAYERS)
    return Pair(plain, plain_tok, hooked, vectors, shape["vocab_size"])


def token_ids(n: int, vocab_size: int, step: int) -> list[int]:
    return [7 + (step * i) % (vocab_size - 8) for i in range(n)]


def bench_generation(m: Pair, paths: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    prompt = token_ids(args.prompt_tokens, m.vocab_size, 13)
    n_tok, hooked = args.new_tokens, m.hooked
    steer = mlux.steering_hooks(m.vectors, ALPHA)
    # Idle: prompt-only steering, given to the decode only, returns None at every step.
    idle = mlux.steering_hooks(m.vectors, ALPHA, positions="prompt", prompt_length=len(prompt))

    def mlx_lm_run(model: Any, tok: Any) -> bk.Run:
        t0 = bk.clock()
        run = bk.timed_stream(mlx_lm.stream_generate(model, tok, prompt, max_tokens=n_tok), t0)
        # untimed: the step mlx-lm queues past the last token, on its own stream
        mx.synchronize(MLX_LM_GENERATE.generation_stream)
        return run

    def mlux_run(prefill_hooks: Any, hooks: Any) -> bk.Run:
        t0 = bk.clock()
        cache, logits = mlux.prefill_with_cache(hooked, prompt, hooks=prefill_hooks)
        return bk.timed_stream(mlux.stream_from_cache(hooked, cache, logits, max_tokens=n_tok,
                                                      hooks=hooks), t0)

    def batch_run() -> bk.Run:  # what ContrastiveSteering.generate does
        t0 = bk.clock()
        (tokens,) = generate_batch(hooked, [prompt], max_tokens=n_tok,
                                   steering=[Steering(m.vectors, ALPHA)])
        return bk.since(t0, {"tokens": tokens})

    every = {BASE: lambda: mlx_lm_run(m.plain, m.plain_tok),
             "control_plain_again": lambda: mlx_lm_run(m.plain, m.plain_tok),
             "wrapped_no_hooks_mlx_lm": lambda: mlx_lm_run(hooked.model, hooked.tokenizer),
             "mlux_no_hooks": lambda: mlux_run(None, None),
             "idle_hooks_3_layers": lambda: mlux_run(None, idle),
             "steered_3_layers": lambda: mlux_run(steer, steer),
             "steered_generate_batch": batch_run}
    runs = bk.interleaved({k: every[k] for k in paths}, args.repeats, args.warmup)
    counts = {k: sorted({len(r[2]["tokens"]) for r in v}) for k, v in runs.items()}
    if any(c != [n_tok] for c in counts.values()):  # correctness, not timing: rates need equal n
        raise RuntimeError(f"token counts differ between paths: {counts}")
    tokens = {k: v[0][2]["tokens"] for k, v in runs.items()}
    steered = [k for k in paths if k.startswith("steered")]
    unsteered = [k for k in paths if not k.startswith("steered")]
    e2e = bk.per_clock(runs, lambda s: n_tok / s)
    decode = bk.per_clock(runs, lambda s: (n_tok - 1) / s, extra="decode")

    def ratios(values: dict[str, Any], goal_at: int) -> dict[str, Any]:  # each path ÷ BASE
        goals = {k: LABELS[k][goal_at] for k in values["wall"] if k != BASE}
        return {k: bk.paired_clocks(values, k, BASE, (">=", g) if g else None)
                for k, g in goals.items()}

    return {
        "prompt_tokens": len(prompt), "new_tokens": n_tok, "steer_layers": STEER_LAYERS,
        "alpha": ALPHA, "paths": list(paths), "token_counts": counts,
        # greedy: every unsteered path makes plain mlx-lm's tokens; the steered paths agree
        "unsteered_tokens_identical": all(tokens[k] == tokens[BASE] for k in unsteered),
        "steered_tokens_identical": all(tokens[k] == tokens[steered[0]] for k in steered),
        "steering_changed_tokens": tokens[steered[0]] != tokens[BASE],
        "end_to_end": {
            "timing": "new_tokens / seconds from the call to the last token (prefill included)",
            "tokens_per_second": bk.stats_clocks(e2e), "ratios": ratios(e2e, 1)},
        "decode_only": {
            "timing": "(new_tokens - 1) / seconds from the first yielded token to the last "
                      "(prefill excluded)",
            "tokens_per_second": bk.stats_clocks(decode), "ratios": ratios(decode, 2),
            # the hooks' own cost, with mlux's decoder on both sides
            "ratios_vs_mlux_no_hooks": {k: bk.paired_clocks(decode, k, "mlux_no_hooks")
                                        for k in ("idle_hooks_3_layers", "steered_3_layers")
                                        if k in decode["wall"]}},
        "seconds_to_first_token": bk.stats_clocks(bk.per_clock(runs, extra="to_first")),
    }


def bench_prefill(m: Pair, args: argparse.Namespace) -> dict[str, Any]:
    prompt = token_ids(args.memory_prompt_tokens, m.vocab_size, 31)

    def mlx_lm_first_token() -> int:
        steps = MLX_LM_GENERATE.generate_step(mx.array(prompt), m.plain, max_tokens=1)
        token = next(steps)[0]
        steps.close()
        mx.synchronize(MLX_LM_GENERATE.generation_stream)  # the decode step it queued
        return token

    # Each returns the first token only: nothing (cache, logits) outlives its measurement.
    variants = {
        "prefill_with_cache": lambda: bk.measure(
            lambda: int(mx.argmax(mlux.prefill_with_cache(m.hooked, prompt)[1]))),
        "mlx_lm_generate_step": lambda: bk.measure(mlx_lm_first_token),
    }
    runs = bk.interleaved(variants, args.prefill_repeats, args.warmup)
    mine, theirs = variants
    peak = {k: [float(r[2]["peak_bytes"]) for r in v] for k, v in runs.items()}
    above = {k: [float(r[2]["peak_bytes"] - r[2]["active_bytes"]) for r in v]
             for k, v in runs.items()}
    sec = bk.per_clock(runs)
    return {
        "prompt_tokens": len(prompt), "mlux_chunk_size": PREFILL_CHUNK,
        "mlx_lm_prefill_step_size": 2048,
        "same_first_token": runs[mine][0][2]["result"] == runs[theirs][0][2]["result"],
        "peak_bytes": {k: bk.stats(v) for k, v in peak.items()},
        "peak_memory_ratio": bk.paired(peak[mine], peak[theirs], ("<=", 1.25)),
        # the peak less what was in use when the prefill started (both models' weights, ...)
        "peak_above_start_ratio": bk.paired(above[mine], above[theirs]),
        "seconds": bk.stats_clocks(sec), "time_ratio": bk.paired_clocks(sec, mine, theirs),
    }


def bench_extraction(hooked: mlux.HookedModel, args: argparse.Namespace) -> dict[str, Any]:
    lo, hi = args.extraction_lengths

    def prompt(i: int, base: int) -> str:  # lengths lo..hi, so the batch really is left-padded
        return " ".join(f"w{base + (7 * i + j) % 500}" for j in range(lo + i * (hi - lo) // 7))

    pos, neg = [prompt(i, 100) for i in range(8)], [prompt(i, 1000) for i in range(8)]
    batch = hooked.tokenize(pos + neg)
    sec = bk.per_clock(bk.interleaved({
        "extract_all_layers": lambda: bk.measure(
            lambda: mlux.extract_steering_vectors(hooked, pos, neg, "all")),
        "plain_forward": lambda: bk.measure(lambda: hooked.model(batch.tokens)),
        "masked_forward": lambda: bk.measure(lambda: hooked.forward(batch)),
    }, args.extraction_repeats, args.warmup))
    return {
        "prompts": 16, "batch_shape": list(batch.tokens.shape), "layers": hooked.num_layers,
        "baseline": "hooked.model(tokens) + mx.eval on the same 16 padded rows",
        "seconds": bk.stats_clocks(sec),
        "ratio": bk.paired_clocks(sec, "extract_all_layers", "plain_forward", ("<=", 1.3)),
        # Extraction runs the masked (BatchKVCache) forward; this splits masking from hooks.
        "ratio_vs_masked_forward": bk.paired_clocks(sec, "extract_all_layers", "masked_forward"),
    }


def bench_shared_prefill(m: Pair, args: argparse.Namespace) -> dict[str, Any]:
    prompt = token_ids(args.shared_prompt_tokens, m.vocab_size, 31)
    k, n_tok = args.continuations, args.continuation_tokens
    rows = [Steering(m.vectors, 0.5 * (j + 1), positions="generated") for j in range(k)]

    def generate(rows: list[Steering]) -> list[list[int]]:
        return generate_batch(m.hooked, [prompt] * len(rows), max_tokens=n_tok, steering=rows)

    generate(rows), generate(rows[:1])  # warm-up: separate calls repeat the one-row call k times
    runs = bk.interleaved({
        "one_batch_shared_prefill": lambda: bk.measure(lambda: generate(rows)),
        "separate_calls": lambda: bk.measure(lambda: [generate([r])[0] for r in rows]),
    }, args.prefill_repeats, warmup=0)
    sec = bk.per_clock(runs)
    return {
        "prompt_tokens": len(prompt), "continuations": k, "new_tokens_each": n_tok,
        "steering": f"layers {STEER_LAYERS}, alphas 0.5..{0.5 * k}, positions 'generated'",
        "padded_batches": m.hooked.supports_padded_batch(), "seconds": bk.stats_clocks(sec),
        "ratio": bk.paired_clocks(sec, "one_batch_shared_prefill", "separate_calls"),
        "outputs_identical": runs["one_batch_shared_prefill"][0][2]["result"]
        == runs["separate_calls"][0][2]["result"],
    }


def table(res: dict[str, Any]) -> str:
    a, b, c = res["generation"], res["generation_big_vocab"], res["prefill"]
    e, s, big, w = res["extraction"], res["shared_prefill"], res["model"]["big_vocab"], 56
    vocab = f"{big['vocab_size'] // 1024}k vocab"

    def rows(title: str, pairs: Sequence[tuple[str, Any]]) -> list[str]:
        return [title] + [bk.format_row(f"  {t}", r, w) for t, r in pairs]

    def section(title: str, part: dict[str, Any], key: str) -> list[str]:
        plain = part[key]["tokens_per_second"]["wall"][BASE]["median"]
        return rows(f"{title} (plain {plain:.1f} tok/s wall):",
                    [(LABELS[k][0], r) for k, r in part[key]["ratios"].items()])

    return "\n".join([
        bk.format_header(w),
        *section(f"(a) end to end (prefill included), tok/s ÷ plain mlx_lm.stream_generate, "
                 f"{a['prompt_tokens']}-token prompt, {a['new_tokens']} new", a, "end_to_end"),
        *section(f"(b) the same, {vocab}, hidden {big['hidden_size']}, {big['num_layers']} "
                 "layers", b, "end_to_end"),
        *rows(f"(c) {c['prompt_tokens']}-token prefill, {vocab}: prefill_with_cache ÷ mlx-lm "
              "generate_step:", [("peak memory", c["peak_memory_ratio"]),
                                 ("peak memory above what was in use before",
                                  c["peak_above_start_ratio"]), ("time", c["time_ratio"])]),
        *section("(d) decode only (prefill excluded), tok/s ÷ plain, runs of (a)", a,
                 "decode_only"),
        *section("    decode only (prefill excluded), runs of (b)", b, "decode_only"),
        *rows("(e) extraction and shared prefill:", [
            ("extraction, all layers ÷ one plain forward (16 rows)", e["ratio"]),
            ("  (same, ÷ masked padded forward)", e["ratio_vs_masked_forward"]),
            (f"{s['continuations']} steered continuations: one batch ÷ separate calls",
             s["ratio"])])])


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    main_model, big = load_pair(args.model), load_pair(args.big_vocab_model)
    model = {"model_type": "llama", "quantize_bits": 4, "main": args.model,
             "big_vocab": args.big_vocab_model,
             "source": "mlux.testing.save_tiny_model (random weights), mlx_lm.load twice"}
    settings = ("quick", "repeats", "prefill_repeats", "extraction_repeats", "warmup")
    result = bk.environment("bench_steering.py", argv, model,
                            {k: getattr(args, k) for k in settings})
    result["generation"] = bench_generation(main_model, PATHS, args)
    result["generation_big_vocab"] = bench_generation(big, BIG_VOCAB_PATHS, args)
    result["prefill"] = bench_prefill(big, args)
    result["extraction"] = bench_extraction(main_model.hooked, args)
    result["shared_prefill"] = bench_shared_prefill(main_model, args)
    result["table"] = table(result)
    bk.write_report(args.output, result)
    return result


if __name__ == "__main__":
    main()
