"""Benchmark batched steering and the server, side by side in one run on one model.

1. An 8-alpha sweep on one prompt (`ContrastiveSteering.compare`: `stream_rows`, one batch whose
   rows share one prefill of `prompt[:-1]`) ÷ the same 8 continuations one after another, each
   its own `generate_batch` call (`ContrastiveSteering.generate` per alpha); and ÷ one
   `prefill_with_cache` continued 8 times by `generate_from_cache` (the same decode work, so this
   ratio is the gain of decoding the rows as one batch; that path steers from position n, so
   its first token is unsteered). Interleaved repeats, paired ratios, wall and cpu clocks.
2. `mlux serve` throughput with 1, 4 and 8 concurrent clients (total generated tokens/s).

Random 4-bit llama (hidden 512, 6 layers, 4k vocab). Run from the repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/bench_batch.py    # ~2 min on 2 idle cores; --quick: seconds
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

import benchkit as bk
import mlx.core as mx
from werkzeug.serving import WSGIRequestHandler, make_server

from mlux import HookedModel, generate_from_cache, prefill_with_cache, steering_hooks
from mlux.generate import collect_rows, generate_batch, stream_rows
from mlux.serve import Limits, create_server_app
from mlux.steering import Steering

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_batch.json"
ALPHAS = (-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0)
LAYER = 3


def sweep(hooked: HookedModel, prompt: list[int], vector: mx.array, tokens: int,
          repeats: int) -> dict[str, Any]:
    n = len(prompt)
    rows = [Steering({LAYER: vector}, a, positions="generated") for a in ALPHAS]

    def one_batch() -> bk.Run:
        t0 = bk.clock()
        return bk.since(t0, {"outs": collect_rows(
            stream_rows(hooked, prompt, rows, max_tokens=tokens), len(rows))})

    def sequential() -> bk.Run:
        t0 = bk.clock()
        return bk.since(t0, {"outs": [generate_batch(hooked, [prompt], max_tokens=tokens,
                                                     steering=[r])[0] for r in rows]})

    def one_prefill() -> bk.Run:
        t0 = bk.clock()
        cache, logits = prefill_with_cache(hooked, prompt)
        outs = [generate_from_cache(hooked, cache, logits, max_tokens=tokens,
                                    hooks=steering_hooks({LAYER: vector}, a, positions=n))
                for a in ALPHAS]
        return bk.since(t0, {"outs": outs})

    runs = bk.interleaved({"one_batch": one_batch, "sequential_calls": sequential,
                           "one_prefill_sequential_decode": one_prefill}, repeats, warmup=1)
    sec = bk.per_clock(runs)
    return {
        "alphas": list(ALPHAS), "layer": LAYER, "positions": "generated", "new_tokens": tokens,
        "prompt_tokens": n, "seconds": bk.stats_clocks(sec),
        "batch_over_sequential": bk.paired_clocks(sec, "one_batch", "sequential_calls"),
        "batch_over_one_prefill": bk.paired_clocks(sec, "one_batch",
                                                   "one_prefill_sequential_decode"),
        # greedy: row i of the batch is the continuation generated alone with alpha i
        "outputs_identical": runs["one_batch"][0][2]["outs"]
        == runs["sequential_calls"][0][2]["outs"],
    }


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no line per request
        pass


def server_throughput(hooked: HookedModel, clients: Sequence[int], tokens: int
                      ) -> list[dict[str, Any]]:
    app = create_server_app(hooked, max_batch=8, limits=Limits(max_tokens=tokens))
    srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/v1/completions"

    def call(i: int, counts: list[int]) -> None:
        body: dict[str, Any] = {"prompt": " ".join(f"w{5 + (i + k) % 50}" for k in range(24)),
                                "max_tokens": tokens, "temperature": 0}
        if i % 2:
            body["steering"] = {"vector": [0.01] * hooked.hidden_size, "layers": [2],
                                "alpha": float(i)}
        req = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            counts[i] = json.loads(r.read())["usage"]["completion_tokens"]

    def burst(n: int) -> dict[str, Any]:
        counts = [0] * n
        threads = [threading.Thread(target=call, args=(i, counts)) for i in range(n)]
        t0 = bk.clock()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall, cpu, _ = bk.since(t0)
        return {"clients": n, "tokens": sum(counts), "wall_s": wall, "cpu_s": cpu,
                "tokens_per_s": sum(counts) / wall}

    try:
        burst(1)  # warm-up: the engine thread's first batch
        rows = [burst(n) for n in clients]
    finally:
        srv.shutdown()
        app.extensions["mlux_serve"]["engine"].close()
    for r in rows:
        r["vs_one_client"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def table(res: dict[str, Any]) -> str:
    s, w = res["sweep"], 56
    lines = [bk.format_header(w),
             f"8-alpha sweep, {s['prompt_tokens']}-token prompt, {s['new_tokens']} new each:",
             bk.format_row("  one batch ÷ 8 generate_batch calls", s["batch_over_sequential"], w),
             bk.format_row("  one batch ÷ one prefill + 8 generate_from_cache",
                           s["batch_over_one_prefill"], w),
             "server: clients | total tokens/s | vs 1 client"]
    lines += [f"        {r['clients']:>7} | {r['tokens_per_s']:>14.1f} | {r['vs_one_client']:.2f}x"
              for r in res["server"]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = bk.parser(__doc__, DEFAULT_OUTPUT, quick="small settings for a smoke test")
    args = p.parse_args(argv)
    tokens, repeats = (8, 1) if args.quick else (64, 3)
    hooked, model = bk.random_llama(args.quick)
    prompt = hooked.tokenize(" ".join(f"w{5 + k % 90}" for k in range(48))).tokens[0].tolist()
    vector = mx.random.normal((hooked.hidden_size,), key=mx.random.key(0)) * 0.05
    result = bk.environment("bench_batch.py", argv, model,
                            {"quick": args.quick, "repeats": repeats, "new_tokens": tokens})
    result["sweep"] = sweep(hooked, prompt, vector, tokens, repeats)
    result["server"] = server_throughput(hooked, (1, 4, 8), tokens)
    result["table"] = table(result)
    bk.write_report(args.output, result)
    return result


if __name__ == "__main__":
    main()
