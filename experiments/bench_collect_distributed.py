"""Benchmark data-parallel `mlux collect`: 2 ranks on this machine (`mlx.launch --backend ring
-n 2`) ÷ 1 process, on the same config, wall time.

Two figures per repeat: end to end (the command as the user waits: start-up, model load, plan,
collection) and the collection only (timed inside rank 0 around `collect`, after the ring is
connected; it includes the exchange of the shards with rank 0). Repeats are interleaved (order
rotated), each into a fresh result folder, and each ratio is the median of the per-repeat
ratios. Both runs' shards are checked to be identical. This machine has 2 cores, so expect
little; the design is for clusters (one rank per machine). From the repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_collect_distributed.py    # ~1 min; --quick: seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_collect_distributed.json"
MODEL = {"model_type": "llama", "hidden_size": 256, "num_layers": 6}


def worker(config: str) -> int:
    from mlux.collect import collect
    from mlux.distributed import is_main_process, world_size

    world_size()  # connect the ring first: the collection figure leaves out the set-up
    t0 = time.perf_counter()
    collect(config, progress=False, echo=lambda s: None)
    if is_main_process():
        print(f"COLLECT_SECONDS {time.perf_counter() - t0:.6f}", flush=True)
    return 0


def _write_config(root: Path, model: Path, data: Path, name: str, shard_size: int) -> Path:
    import yaml

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model), "activation_layers": ["residuals_all"]},
        "inference": {"batch_size": 4, "positions": ["last", "mean"]},
        "data": {"path": str(data)},
        "output": {"result_dir": str(root / name), "shard_size": shard_size},
    }))
    return path


def _run(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "COLLECT_SECONDS" not in proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    inner = float(proc.stdout.split("COLLECT_SECONDS")[1].split()[0])
    return wall, inner


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a smoke test: few prompts, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)

    import benchkit as bk

    from mlux.collect import Manifest
    from mlux.testing import save_tiny_model

    launch = shutil.which("mlx.launch")
    if launch is None:
        print("mlx.launch is not on PATH (it comes with the mlx package)")
        return 1
    prompts, words, shard_size = (8, 16, 2) if args.quick else (256, 64, 8)
    repeats = 1 if args.quick else args.repeats
    script = str(Path(__file__).resolve())
    runs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "collect": []}
                                               for k in ("one", "two")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny_model(root / "model", MODEL["model_type"],
                                hidden_size=MODEL["hidden_size"], num_layers=MODEL["num_layers"])
        data = root / "data.jsonl"
        data.write_text("".join(
            json.dumps({"text": " ".join(f"w{7 + (i * 7 + j * 3) % 50}" for j in range(words)),
                        "category": "ab"[i % 2]}) + "\n" for i in range(prompts)))
        commands = {
            "one": lambda cfg: [sys.executable, script, "--worker", str(cfg)],
            "two": lambda cfg: [launch, "--backend", "ring", "-n", "2", "--python",
                                sys.executable, script, "--worker", str(cfg)],
        }
        order = ["one", "two"]
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                cfg = _write_config(root, model, data, f"{name}{r}", shard_size)
                wall, inner = _run(commands[name](cfg))
                runs[name]["wall"].append(wall)
                runs[name]["collect"].append(inner)
                print(f"repeat {r} {name}: wall {wall:.2f} s, collect {inner:.2f} s", flush=True)
        chunks = {n: json.loads((root / f"{n}0" / "manifest.json").read_text())["chunks"]
                  for n in order}
        identical = chunks["one"] == chunks["two"]  # same sha256 for every shard
        assert Manifest.load(root / "two0").data["complete"]
    ratio = {k: statistics.median(t / o for t, o in zip(runs["two"][k], runs["one"][k],
                                                        strict=True))
             for k in ("wall", "collect")}
    table = (f"2 ranks ÷ 1 process, wall time, median of {repeats}: end to end "
             f"{ratio['wall']:.3f}, collection only {ratio['collect']:.3f} "
             f"(shards identical: {identical})")
    settings = {"prompts": prompts, "words_per_prompt": words, "shard_size": shard_size,
                "batch_size": 4, "hooks": "residuals_all", "positions": ["last", "mean"],
                "repeats": repeats, "launch": "mlx.launch --backend ring -n 2"}
    result: dict[str, Any] = bk.environment("bench_collect_distributed.py",
                                            list(argv or sys.argv[1:]), MODEL, settings)
    result.update({"ratio_2_over_1": ratio, "shards_identical": identical, "runs": runs,
                   "table": table})
    bk.write_report(args.output, result)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
