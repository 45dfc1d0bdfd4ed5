"""Soak and stop the two servers as a user runs them: `mlux serve` and `mlux explore` started as
commands on the built-in model, sent steered requests, stopped with Ctrl-C.

Nothing here asserts; it measures and writes experiments/results/servers_soak.json. From the
repository root:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python experiments/servers_soak.py          # ~4 min on 2 cores; --quick: seconds

(a) Soak: after a warm-up of 20 requests, N steered requests (4 client threads); the server
    process's thread count and RSS (from /proc/PID/status) before and after.
(b) Stops: K times per server, start it, send one steered request, SIGINT (Ctrl-C); its exit
    code and whether stderr holds "terminate called" (MLX's abort at exit) or a traceback.
(c) The explorer's /api/compute token cap: seconds one request holds the model at the cap and
    what a request far past it (64 x 4000 characters per side) gets.

`--servers-path DIR` runs the servers from another checkout (e.g. the code before the fix), for
a before/after comparison; the measuring process always uses this one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchkit  # noqa: E402

from mlux import web  # noqa: E402

PROMPT = "yesterday the"


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return web.post_json(port, path, body, timeout=120)


def steered(verb: str) -> Callable[[int, int], int]:
    """A steered request for `verb`'s API; returns the HTTP status."""
    def send(port: int, i: int) -> int:
        if verb == "serve":
            body = {"prompt": PROMPT, "max_tokens": 4,
                    "steering": {"vector": "happy", "alpha": 1.0 + i % 3}}
            return post(port, "/v1/completions", body)[0]
        return post(port, "/api/generate", {"prompt": PROMPT, "vector": {"name": "happy"},
                                            "layers": [2], "alpha": 1.0 + i % 3,
                                            "max_tokens": 4})[0]
    return send


def start(verb: str, vectors: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    # Run from the library's parent folder: `python -m` puts the working folder first on
    # sys.path, which would shadow PYTHONPATH (--servers-path) from the repository root.
    proc = subprocess.Popen([sys.executable, "-m", "mlux", verb, "--port", "0", "--vectors",
                             str(vectors)], stderr=subprocess.PIPE, text=True, env=env,
                            cwd=vectors.parent)
    port = web.served_port(proc.stderr)  # type: ignore[arg-type]
    if port is None:
        raise RuntimeError(f"mlux {verb} did not start (exit {proc.wait()})")
    return proc, port


def proc_status(pid: int) -> tuple[int, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    return threads, rss


def stop(proc: subprocess.Popen[str]) -> tuple[Optional[int], str]:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def soak(verb: str, vectors: Path, env: dict[str, str], n: int) -> dict[str, Any]:
    proc, port = start(verb, vectors, env)
    send = steered(verb)
    statuses = [send(port, i) for i in range(20)]
    threads0, rss0 = proc_status(proc.pid)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        statuses += pool.map(lambda i: send(port, i), range(n))
    seconds = time.perf_counter() - t0
    time.sleep(0.5)  # the server's request threads finish their last writes
    threads1, rss1 = proc_status(proc.pid)
    code, err = stop(proc)
    return {"requests": n, "seconds": round(seconds, 2),
            "ok": sum(s == 200 for s in statuses), "failed": sum(s != 200 for s in statuses),
            "threads_before": threads0, "threads_after": threads1,
            "rss_mb_before": round(rss0, 1), "rss_growth_mb": round(rss1 - rss0, 1),
            "exit_code": code, "aborted": "terminate called" in err}


def stops(verb: str, vectors: Path, env: dict[str, str], k: int) -> dict[str, Any]:
    codes, aborts, tracebacks = [], 0, 0
    for i in range(k):
        proc, port = start(verb, vectors, env)
        steered(verb)(port, i)
        code, err = stop(proc)
        codes.append(code)
        aborts += "terminate called" in err
        tracebacks += "Traceback" in err
    return {"stops": k, "exit_0": codes.count(0), "exit_codes": codes, "aborts": aborts,
            "tracebacks": tracebacks}


def compute_cap() -> dict[str, Any]:
    from mlux import HookedModel
    from mlux.explorer import create_app, get_state

    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_app(hooked, vectors_dir=tempfile.mkdtemp())
    client, cap = app.test_client(), None
    with app.app_context():
        cap = get_state().limits.max_compute_tokens
    words = "the bright garden . the gloomy house .".split()
    out: dict[str, Any] = {"max_compute_tokens": cap}
    for per, count in ((128, 32), (600, 6)):  # tokens per prompt, prompts per side: ~the cap
        side = [" ".join(words[(i + k) % len(words)] for k in range(per)) for i in range(count)]
        t0 = time.perf_counter()
        r = client.post("/api/compute", json={"positive": side, "negative": side[::-1]})
        out[f"{count}x{per}_tokens_per_side"] = {"status": r.status_code, "tokens": r.json.get(
            "prompt_tokens"), "seconds": round(time.perf_counter() - t0, 2)}
    big = ["the bright garden . " * 200] * 64  # 64 x 4000 characters per side
    t0 = time.perf_counter()
    r = client.post("/api/compute", json={"positive": big, "negative": big})
    out["64x4000_chars_per_side"] = {"status": r.status_code, "error": r.json.get("error"),
                                     "seconds": round(time.perf_counter() - t0, 2)}
    with app.app_context():
        get_state().close()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = benchkit.parser(__doc__, Path("experiments/results/servers_soak.json"),
                        quick="30 requests and 2 stops per server (a smoke test)")
    p.add_argument("--servers-path", type=Path, default=None,
                   help="run the servers from this checkout (PYTHONPATH), e.g. the code before "
                        "the fix")
    args = p.parse_args(argv)
    n, k = (30, 2) if args.quick else (300, 20)
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(args.servers_path or root)
    with tempfile.TemporaryDirectory() as tmp:
        vectors = Path(tmp) / "vectors"
        vectors.mkdir()
        subprocess.run([sys.executable, "-m", "mlux", "extract", "--output",
                        str(vectors / "happy.safetensors")], env=env, check=True,
                       capture_output=True, cwd=tmp)
        result: dict[str, Any] = benchkit.environment(
            "servers_soak.py", sys.argv[1:] if argv is None else argv, {"model": "mlux-toy"},
            {"requests": n, "stops": k, "servers_path": str(args.servers_path or root)})
        result["soak"] = {verb: soak(verb, vectors, env, n) for verb in ("serve", "explore")}
        result["stops"] = {verb: stops(verb, vectors, env, k) for verb in ("serve", "explore")}
    result["compute_cap"] = compute_cap() if args.servers_path is None else None
    rows = [f"{verb:8} {s['requests']} steered requests: threads {s['threads_before']} -> "
            f"{s['threads_after']}, RSS +{s['rss_growth_mb']} MB, {s['failed']} failed; "
            f"Ctrl-C after traffic: exit 0 in {result['stops'][verb]['exit_0']} of "
            f"{result['stops'][verb]['stops']} stops ({result['stops'][verb]['aborts']} aborts)"
            for verb, s in result["soak"].items()]
    result["table"] = "\n".join(rows)
    benchkit.write_report(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
