"""Shared timing kit of the benchmark scripts: interleaved repeats, paired ratios, peak memory,
and the environment block every report carries. Nothing here asserts on timing.

Every figure is a ratio between paths run interleaved (A, B, A, B, ... with the order rotated
each repeat, after a warm-up) in one process, so results travel across machines. Each run is
timed on the wall clock (the headline) and in process CPU time (which other processes sharing
the cores do not inflate), and its peak MLX memory is read with `mx.get_peak_memory`.
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

import mlux
from mlux.atomic import atomic_write_json

__all__ = ["CLOCKS", "Run", "clock", "environment", "format_header", "format_row", "interleaved",
           "measure", "paired", "paired_clocks", "parser", "per_clock", "random_llama", "since",
           "stats", "stats_clocks", "timed_stream", "write_report"]

CLOCKS = ("wall", "cpu")
Run = tuple[float, float, dict[str, Any]]  # (wall seconds, cpu seconds, extras)


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], extras: Optional[dict[str, Any]] = None,
          t1: Optional[tuple[float, float]] = None) -> Run:
    t1 = t1 or clock()
    return t1[0] - t0[0], t1[1] - t0[1], extras or {}


def measure(fn: Callable[[], Any]) -> Run:
    """Time `fn()` (its result evaluated) with its peak MLX memory in `extras["peak_bytes"]` and
    the memory already in use when it started (weights, ...) in `extras["active_bytes"]`."""
    mx.synchronize()
    mx.reset_peak_memory()
    active = mx.get_active_memory()
    t0 = clock()
    out = fn()
    if isinstance(out, mx.array):
        mx.eval(out)
    mx.synchronize()
    return since(t0, {"result": out, "peak_bytes": mx.get_peak_memory(), "active_bytes": active})


def timed_stream(items: Iterable[Any], t0: Optional[tuple[float, float]] = None) -> Run:
    """Drain a stream of token ids (or mlx-lm responses), timed from `t0` (default: now) to the
    last token - not to the generator's end, whose clean-up is no part of generating. Extras:
    `tokens`, `to_first` and `decode` = (wall, cpu) seconds to the first token and from the
    first token to the last."""
    t0 = t0 or clock()
    tokens, stamps = [], []
    for item in items:
        stamps.append(clock())
        tokens.append(int(getattr(item, "token", item)))
    if not stamps:
        raise RuntimeError("the stream yielded no token")
    return since(t0, {"tokens": tokens, "to_first": since(t0, t1=stamps[0])[:2],
                      "decode": since(stamps[0], t1=stamps[-1])[:2]}, stamps[-1])


def parser(doc: str, output: Path, *, quick: str,
           repeats: Optional[str] = None) -> argparse.ArgumentParser:
    """The options every benchmark script takes: `--output`, `--quick` (a smoke test) and, with
    `repeats` as its help, `--repeats` (default None: the script picks)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--output", type=Path, default=output)
    p.add_argument("--quick", action="store_true", help=quick)
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=None, help=repeats)
    return p


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
            mx.synchronize()  # work queued past a generator's end finishes untimed
            runs[n].append(variants[n]())
    return runs


def stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def stats_clocks(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """`stats` of every variant on every clock of `per_clock`."""
    return {c: {k: stats(v) for k, v in by_variant.items()} for c, by_variant in values.items()}


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


def paired_clocks(values: dict[str, dict[str, list[float]]], num: str, den: str,
                  target: Optional[tuple[str, float]] = None) -> dict[str, dict[str, Any]]:
    """`paired(values[c][num], values[c][den], target)` for every clock `c` of `per_clock`."""
    return {c: paired(v[num], v[den], target) for c, v in values.items()}


def per_clock(runs: dict[str, list[Run]], f: Callable[[float], float] = float,
              extra: Optional[str] = None) -> dict[str, dict[str, list[float]]]:
    """{clock: {variant: [f(seconds) per repeat]}}; with `extra`, the seconds are the (wall, cpu)
    pair each run keeps in `extras[extra]` (e.g. `timed_stream`'s "decode"), for the variants
    whose runs have it."""
    pick = (lambda r: r) if extra is None else (lambda r: r[2][extra])
    runs = {k: v for k, v in runs.items() if extra is None or extra in v[0][2]}
    return {c: {k: [f(pick(r)[i]) for r in v] for k, v in runs.items()}
            for i, c in enumerate(CLOCKS)}


def format_header(width: int = 52) -> str:
    title = "ratio (median of paired repeats)"
    return f"{title:<{width}} {'wall':>6} [min,   max  ] {'cpu':>6}  goal"


def format_row(label: str, ratio: dict[str, Any], width: int = 52) -> str:
    """One table line: a `paired_clocks` result (wall headline, cpu beside it; the goal checked
    on both), or one `paired` result with no clocks (memory: cpu column "-")."""
    clocked = "wall" in ratio
    by_clock = ratio if clocked else {"wall": ratio}
    w, goal = by_clock["wall"], by_clock["wall"]["goal"]
    cpu = f"{by_clock['cpu']['median']:>6.3f}" if "cpu" in by_clock else f"{'-':>6}"
    verdict = "-"
    if goal:
        met = ", ".join(f"{c + ' ' if clocked else ''}{'met' if r['goal']['met'] else 'MISSED'}"
                        for c, r in by_clock.items())
        verdict = f"{goal['op']} {goal['value']:.2f}: {met}"
    return (f"{label:<{width}} {w['median']:>6.3f} [{w['min']:.3f}, {w['max']:.3f}] {cpu}  "
            f"{verdict}")


def environment(script: str, argv: Sequence[str], model: dict[str, Any],
                settings: dict[str, Any]) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        # The equivalent command line from the repository root (main() may be called directly).
        "command": ["python", f"experiments/{script}", *argv],
        "versions": {"python": platform.python_version(), "executable": sys.executable,
                     "mlx": mx.__version__, "mlx_lm": md.version("mlx-lm"),
                     "mlux": mlux.__version__, "mlux_git": commit},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "device": str(mx.default_device()),
                    "ld_preload": os.environ.get("LD_PRELOAD"),
                    # Other processes may share the cores: see the control rows and cpu ratios.
                    "loadavg_1_5_15_at_start": list(os.getloadavg())},
        "model": model,
        "settings": settings,
    }


def write_report(path: Path, result: dict[str, Any]) -> None:
    result["machine"]["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    print(result["table"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    print(f"wrote {path}")


def random_llama(quick: bool) -> tuple[Any, dict[str, Any]]:
    """The benchmarks' random 4-bit llama (hidden 512, or 128 for `--quick`; 6 layers, 4k
    vocabulary) as a `HookedModel` whose EOS is never emitted (every row makes all its tokens),
    and its description for the report."""
    from mlux.testing import save_tiny_model

    shape = {"hidden_size": 128 if quick else 512, "num_layers": 6, "vocab_size": 4096}
    with tempfile.TemporaryDirectory(prefix="mlux-bench-") as tmp:
        save_tiny_model(tmp, "llama", quantize_bits=4, **shape)
        hooked = mlux.HookedModel.from_pretrained(tmp)
    hooked.tokenizer.eos_token_ids = {-1}
    return hooked, {"model_type": "llama", "quantize_bits": 4, **shape,
                    "source": "mlux.testing.save_tiny_model (random weights)"}
