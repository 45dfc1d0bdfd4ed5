"""`python -m mlux.testing.coverage`: every check of `mlux.testing.checks` on a tiny instance of
every module of the installed `mlx_lm.models`, fp32 and 4-bit; prints one row per module and a
summary line, and writes the results as JSON (the README's table is generated from it by
`python -m mlux.testing.readme_table`).

Each module runs in a child process (a model that crashes the interpreter is a result too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

from mlux.atomic import atomic_write_text

from .modules import model_modules, unsupported_reason

__all__ = ["CACHE_CHECKS", "DEFAULT_OUT", "PRECISIONS", "coverage", "main", "summarize"]

DEFAULT_OUT = Path("experiments/results/coverage.json")
PRECISIONS = ("fp32", "4bit")
CACHE_CHECKS = ("cache_all", "cache_prompt", "cache_generated", "cache_3", "cache_2-9",
                "cache_additive", "cache_chunked")
_TIMEOUT = 600


def _one(model_type: str) -> dict[str, Any]:
    """All checks on one module, both precisions (run in the child)."""
    from .checks import run_checks
    from .checks_io import run_io_checks

    out: dict[str, Any] = {p: run_checks(model_type, p == "4bit") for p in PRECISIONS}
    out["io"] = run_io_checks(model_type)
    return out


def _child(model_type: str) -> dict[str, Any]:
    """`_one` in a fresh interpreter; a crash or timeout is recorded as the module's result."""
    cmd = [sys.executable, "-m", "mlux.testing.coverage", "--one", model_type]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT,
                              env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {_TIMEOUT} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def coverage(modules: Optional[Sequence[str]] = None, jobs: int = 2) -> dict[str, Any]:
    """Results keyed by module: `{"unsupported": reason}` or the checks per precision."""
    names = list(modules or model_modules())
    results: dict[str, Any] = {}
    runnable = [n for n in names if unsupported_reason(n) is None]
    for n in names:
        if n not in runnable:
            results[n] = {"unsupported": unsupported_reason(n)}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for name, res in zip(runnable, pool.map(_child, runnable), strict=True):
            results[name] = res
            print(_row(name, res), flush=True)
    return dict(sorted(results.items()))


def _passes(res: dict[str, Any], keys: Sequence[str]) -> bool:
    return all(res.get(p, {}).get(k, {}).get("status") in ("ok", "fallback")
               for p in PRECISIONS for k in keys)


def module_status(res: dict[str, Any]) -> dict[str, Any]:
    """One row's columns: wraps, hooks, steering, capture, cache, batching, bake, load."""
    if "unsupported" in res or "error" in res:
        return {"note": res.get("unsupported") or res.get("error")}
    fp = res["fp32"]
    if fp.get("wrap", {}).get("status") == "refused":  # mlux refuses it, naming why
        return {"note": fp["wrap"]["detail"]}
    batch = fp.get("padded_batch", {})
    io = res.get("io", {})
    fails = sorted({f"{p}:{k}" for p in PRECISIONS for k, v in res[p].items()
                    if v["status"] == "fail"})
    return {
        "wrap": _passes(res, ["wrap"]),
        "hooks": _passes(res, ["noop", "residuals"]),
        "steering": _passes(res, ["steering"]),
        "capture": _passes(res, ["capture"]),
        "cache": _passes(res, CACHE_CHECKS),
        "batch": "padded" if batch.get("status") == "ok" else
                 ("rows" if batch.get("status") == "fallback" else "FAIL"),
        "bake": {k: v.get("status") for k, v in io.items() if k.startswith("bake")},
        "load": bool(io) and all(v.get("status") in ("ok", "refused")
                                 for k, v in io.items() if k.startswith("load")),
        "mixers": fp.get("wrap", {}).get("detail", "").rpartition("attention_i = ")[2],
        "fails": fails,
        "note": batch.get("detail", "") if batch.get("status") == "fallback" else "",
    }


def _row(name: str, res: dict[str, Any]) -> str:
    s = module_status(res)
    if "wrap" not in s:
        return f"{name:22} -- {s['note']}"
    flags = " ".join(f"{k}={'ok' if s[k] else 'FAIL'}"
                     for k in ("wrap", "hooks", "steering", "capture", "cache"))
    bake = ",".join(f"{k}:{v}" for k, v in s["bake"].items())
    fails = f"  fails: {' '.join(s['fails'])}" if s["fails"] else ""
    load = "ok" if s["load"] else "FAIL"
    return f"{name:22} {flags} batch={s['batch']} bake[{bake}] load={load}{fails}"


def summarize(results: dict[str, Any]) -> str:
    """`wrapped N/M, steering exact N/M, cache == naive N/M, bake N/M` over every module."""
    total = len(results)
    rows = [module_status(r) for r in results.values()]
    ran = [r for r in rows if "wrap" in r]

    def count(key: str) -> int:
        return sum(1 for r in ran if r[key] is True)

    bake = sum(1 for r in ran if "ok" in r["bake"].values())
    unsupported = total - len(ran)
    return (f"wrapped {count('wrap')}/{total}, hooks {count('hooks')}/{total}, "
            f"steering exact {count('steering')}/{total}, capture {count('capture')}/{total}, "
            f"cache == naive {count('cache')}/{total}, padded batch "
            f"{sum(1 for r in ran if r['batch'] == 'padded')}/{total}, bake {bake}/{total}, "
            f"load {count('load')}/{total} ({unsupported} cannot run here or are refused, listed "
            "with reasons)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlux.testing.coverage", description=__doc__)
    p.add_argument("modules", nargs="*", help="module names (default: every module)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--jobs", type=int, default=2, help="modules checked at once")
    p.add_argument("--update", action="store_true",
                   help="with module names: replace their rows in --out, keep the others")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one)))
        return 0
    results = coverage(args.modules or None, args.jobs)
    if args.modules and args.update:
        results = {**json.loads(args.out.read_text())["modules"], **results}
    line = summarize(results)
    print(line)
    if not args.modules or args.update:  # a partial run never overwrites the full table
        atomic_write_text(args.out, _dump(line, results))
        print(f"wrote {args.out}")
    return 0


def _dump(summary: str, results: dict[str, Any]) -> str:
    """The results file: one line per module, so a rerun's diff shows what changed."""
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                       for k, v in sorted(results.items()))
    head = json.dumps({"summary": summary, "mlx_lm": _mlx_lm_version()})[:-1]
    return f"{head}, \"modules\": {{\n{rows}\n}}}}\n"


def _mlx_lm_version() -> str:
    from importlib.metadata import version

    return version("mlx-lm")


if __name__ == "__main__":
    raise SystemExit(main())
