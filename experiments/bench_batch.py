"""Benchmark batched steering and the server, side by side in one run on one model.

1. An 8-alpha sweep on one prompt: one batch (`ContrastiveSteering.compare`-style, one
   prefill shared by 8 rows) vs the same 8 continuations generated one after another.
2. `mlux serve` throughput with 1, 4 and 8 concurrent clients (total generated tokens/s).

    python experiments/bench_batch.py [--quick] [--output experiments/results/bench_batch.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
from werkzeug.serving import make_server

import mlux
from mlux import HookedModel, generate_from_cache, prefill_with_cache, steering_hooks
from mlux.atomic import atomic_write_json
from mlux.batch import Steering, decode_batch, merge_prefills, row_steering_hooks
from mlux.serve import Limits, create_server_app
from mlux.testing import save_tiny_model

ALPHAS = (-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sweep(hooked: HookedModel, prompt: list[int], vectors: dict, tokens: int, repeats: int
          ) -> dict[str, Any]:
    n, layer = len(prompt), 3

    def sequential() -> None:
        cache, logits = prefill_with_cache(hooked, prompt)
        for a in ALPHAS:
            generate_from_cache(hooked, cache, logits, max_tokens=tokens,
                                hooks=steering_hooks({layer: vectors[layer]}, a,
                                                     positions="generated", prompt_length=n))

    def batched() -> None:
        cache, logits = prefill_with_cache(hooked, prompt)
        rows = [Steering({layer: vectors[layer]}, a, positions="generated") for a in ALPHAS]
        hooks = row_steering_hooks(hooked, rows, [n] * len(rows))
        decode_batch(hooked, merge_prefills([cache] * len(rows)),
                     mx.repeat(logits[None], len(rows), axis=0), max_tokens=tokens, hooks=hooks)

    sequential(), batched()  # warm-up: kernels, allocator caches
    seq, bat = [], []
    for _ in range(repeats):  # interleaved so drift hits both alike
        seq.append(timed(sequential))
        bat.append(timed(batched))
    seq_t, bat_t = statistics.median(seq), statistics.median(bat)
    return {"alphas": list(ALPHAS), "new_tokens": tokens, "prompt_tokens": n,
            "sequential_s": seq, "batched_s": bat, "sequential_median_s": seq_t,
            "batched_median_s": bat_t, "batched_over_sequential": bat_t / seq_t}


def server_throughput(hooked: HookedModel, clients: Sequence[int], tokens: int
                      ) -> list[dict[str, Any]]:
    app = create_server_app(hooked, max_batch=8, limits=Limits(max_tokens=tokens))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/v1/completions"

    def call(i: int, counts: list[int]) -> None:
        body = {"prompt": " ".join(f"w{5 + (i + k) % 50}" for k in range(24)),
                "max_tokens": tokens, "temperature": 0}
        if i % 2:
            body["steering"] = {"vector": [0.01] * hooked.hidden_size, "layers": [2],
                                "alpha": float(i)}
        req = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            counts[i] = json.loads(r.read())["usage"]["completion_tokens"]

    rows = []
    try:
        for n in clients:
            counts = [0] * n
            threads = [threading.Thread(target=call, args=(i, counts)) for i in range(n)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            rows.append({"clients": n, "tokens": sum(counts), "wall_s": wall,
                         "tokens_per_s": sum(counts) / wall})
    finally:
        srv.shutdown()
        app.extensions["mlux_serve"]["engine"].close()
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_one_client"] = r["tokens_per_s"] / base
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--output", default="experiments/results/bench_batch.json")
    args = p.parse_args(argv)
    hidden, tokens, repeats = (512, 8, 1) if args.quick else (512, 64, 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_model(Path(tmp) / "m", "llama", quantize_bits=4, hidden_size=hidden,
                               num_layers=6, vocab_size=4096)
        hooked = HookedModel.from_pretrained(str(path))
    prompt = hooked.tokenize(" ".join(f"w{5 + k % 90}" for k in range(48))).tokens[0].tolist()
    vectors = {3: mx.random.normal((hidden,), key=mx.random.key(0)) * 0.05}
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "versions": {"mlux": mlux.__version__, "mlx": mx.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "model": {"arch": "llama", "hidden_size": hidden, "num_layers": 6, "bits": 4,
                  "vocab_size": 4096},
        "sweep": sweep(hooked, prompt, vectors, tokens, repeats),
        "server": server_throughput(hooked, (1, 4, 8), tokens),
    }
    s = result["sweep"]
    lines = [f"8-alpha sweep, {s['new_tokens']} new tokens each: sequential "
             f"{s['sequential_median_s']:.2f} s, one batch {s['batched_median_s']:.2f} s "
             f"-> batched / sequential = {s['batched_over_sequential']:.2f}",
             "server: clients | total tokens/s | vs 1 client"]
    lines += [f"        {r['clients']:>7} | {r['tokens_per_s']:>14.1f} | {r['vs_one_client']:.2f}x"
              for r in result["server"]]
    result["table"] = lines
    print("\n".join(lines))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
