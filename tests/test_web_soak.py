"""Both servers under hostile and sustained use, over real sockets: errors raised below Flask
are JSON, bodies past the cap are 413 however they are sent, a steady stream of steered requests
holds the process's threads and memory flat (every MLX call runs on the app's one model thread),
and Ctrl-C / SIGTERM after traffic stop the real command with exit 0.

(`experiments/servers_soak.py` runs the same checks at the issue's sizes: 20 stops per server.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import mlx.core as mx
import pytest

from mlux import HookedModel, SteeringVector, web
from mlux.explorer import create_app, get_state
from mlux.serve import create_server_app
from mlux.testing import save_tiny_model
from mlux.vector_library import VectorLibrary

PROMPT = "w15 w16 w17 w8"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("soak")
    model = save_tiny_model(root / "model", "llama", num_layers=3)
    hooked = HookedModel.from_pretrained(str(model))
    direction = mx.random.normal((hooked.hidden_size,), key=mx.random.key(3)) * 4
    VectorLibrary(root / "vectors").save("push", SteeringVector({1: direction, 2: direction}))
    return {"root": root, "model": model, "hooked": hooked}


def _serve(app: Any) -> Iterator[int]:
    server = web.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def serve_port(setup: dict[str, Any]) -> Iterator[int]:
    app = create_server_app(setup["hooked"], vectors=setup["root"] / "vectors", max_batch=4)
    try:
        yield from _serve(app)
    finally:
        app.extensions["mlux_serve"]["engine"].close()


@pytest.fixture(scope="module")
def explorer(setup: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    app = create_app(setup["hooked"], vectors_dir=setup["root"] / "vectors")
    try:
        for port in _serve(app):
            yield port, app
    finally:
        with app.app_context():
            get_state().close()


post = web.post_json


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as is; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


# -- errors below Flask: JSON in each app's own shape -------------------------------------------

def _below_flask_cases(path: str) -> list[tuple[bytes, int]]:
    host = b"Host: 127.0.0.1\r\n"
    return [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + host + b"\r\n", 414),
        (b"GET " + path.encode() + b" HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 70_000
         + b"\r\n\r\n", 431),
        (b"GET " + path.encode() + b" HTTP/1.1\r\n" + host
         + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET / HTTP/9.9\r\n" + host + b"\r\n", 505),
        (b"GET / HTTP/x.y\r\n" + host + b"\r\n", 400),
    ]


def test_serve_errors_below_flask_are_openai_json(serve_port: int) -> None:
    for data, status in _below_flask_cases("/v1/models"):
        got, headers, body = raw(serve_port, data)
        assert got == status, data[:40]
        assert headers["Content-Type"] == "application/json"
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert post(serve_port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})[0] == 200


def test_explorer_errors_below_flask_are_json(explorer: tuple[int, Any]) -> None:
    port, _ = explorer
    for data, status in _below_flask_cases("/api/model"):
        got, headers, body = raw(port, data)
        assert got == status and headers["Content-Type"] == "application/json", data[:40]
        assert set(json.loads(body)) == {"error", "field"}


def _chunked(path: str, size: int, piece: int = 1 << 16) -> bytes:
    body = b'{"max_tokens": 2, "prompt": "' + b"w5 " * (size // 3) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece])
                      for i in range(0, len(body), piece))
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + chunks + b"0\r\n\r\n")


def test_chunked_body_over_the_cap_is_413(serve_port: int, explorer: tuple[int, Any]) -> None:
    """Sent without Content-Length, a body past the cap is refused, not cut into bad JSON."""
    for port, path, cap in ((serve_port, "/v1/completions", 8 << 20),
                            (explorer[0], "/api/compute", 1 << 20)):
        status, _, body = raw(port, _chunked(path, cap + 1000))
        assert status == 413, body[:200]
        assert "limit" in body.decode()
    # Under the cap, a chunked body is read whole.
    status, _, body = raw(serve_port, _chunked("/v1/completions", 30))
    assert status == 200, body[:300]


# -- serve: fields never silently ignored ----------------------------------------------------------

def test_serve_model_field(serve_port: int, setup: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/v1/models") as r:
        served = json.loads(r.read())
    model_id = served["data"][0]["id"]
    assert post(serve_port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1,
                                                 "model": model_id})[0] == 200
    assert post(serve_port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1})[0] == 200
    status, body = post(serve_port, "/v1/completions", {"prompt": PROMPT, "model": "gpt-4"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model" and model_id in body["error"]["message"]
    status, body = post(serve_port, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "w5"}], "model": 7})
    assert status == 400 and body["error"]["param"] == "model"


@pytest.mark.parametrize(("body", "param"), [
    ({"logprobs": 2}, "logprobs"), ({"logprobs": 0}, "logprobs"), ({"echo": True}, "echo"),
    ({"top_logprobs": 3}, "top_logprobs"), ({"best_of": 2}, "best_of"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"presence_penalty": 1}, "presence_penalty"), ({"suffix": "w9"}, "suffix"),
    ({"temprature": 0.5}, "temprature"), ({"stop": 5}, "stop"), ({"stop": ["a"] * 5}, "stop"),
    ({"stop": [""]}, "stop"), ({"user": 5}, "user"),
    ({"steering": {"vector": [1e38] * 64, "layers": [1]}}, "steering.vector"),
    ({"steering": {"vector": [1e17] * 64, "layers": [1], "alpha": 1000}}, "steering.alpha"),
])
def test_serve_refuses_what_it_would_ignore(serve_port: int, body: dict[str, Any], param: str
                                            ) -> None:
    status, payload = post(serve_port, "/v1/completions", {"prompt": PROMPT, **body})
    assert status == 400, payload
    assert payload["error"]["param"] == param and payload["error"]["message"]


def test_serve_accepts_optional_fields_at_their_defaults(serve_port: int) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "logprobs": None, "echo": False,
            "frequency_penalty": 0, "presence_penalty": 0.0, "best_of": 1, "logit_bias": {},
            "user": "someone", "n": 1, "stream": False}
    plain = post(serve_port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})[1]
    status, payload = post(serve_port, "/v1/completions", body)
    assert status == 200 and payload["choices"][0]["text"] == plain["choices"][0]["text"]


@pytest.mark.parametrize("content", ["", " ", "\n", None, 5, [{"type": "text", "text": "x"}]])
def test_blank_chat_messages_are_400(serve_port: int, content: Any) -> None:
    status, payload = post(serve_port, "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": content}]})
    assert status == 400 and payload["error"]["param"] == "messages[0].content"


def test_unknown_chat_role_is_400(serve_port: int) -> None:
    status, payload = post(serve_port, "/v1/chat/completions",
                           {"messages": [{"role": "wizard", "content": "w5"}]})
    assert status == 400 and payload["error"]["param"] == "messages[0].role"
    assert "user" in payload["error"]["message"]


def test_disconnected_non_streamed_request_stops_decoding(setup: dict[str, Any]) -> None:
    """A client that hangs up before its (non-streamed) answer frees its batch slot."""
    app = create_server_app(setup["hooked"], max_batch=1)
    engine = app.extensions["mlux_serve"]["engine"]
    slow = lambda x, ctx: time.sleep(0.01)  # noqa: E731
    try:
        for port in _serve(app):
            with setup["hooked"].hooks({"residuals_0": slow}):
                body = json.dumps({"prompt": PROMPT, "max_tokens": 512}).encode()
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                deadline = time.monotonic() + 30
                while not engine.live and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert engine.live == 1
                sock.close()  # gone before any byte of the answer
                start = engine.steps
                while engine.live and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert engine.live == 0 and engine.steps - start < 200  # not all 512 tokens
            assert post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})[0] == 200
    finally:
        engine.close()


# -- soak: threads and memory flat ---------------------------------------------------------------

def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _soak(send: Any, n: int = 300, workers: int = 4) -> tuple[int, int, float]:
    """Send `n` requests from `workers` client threads (after a warm-up); the process's thread
    count before and after, and its RSS growth in MB."""
    for i in range(20):
        send(i)
    threads, rss = _threads(), _rss_mb()
    with ThreadPoolExecutor(workers) as pool:  # its threads are joined when the block ends
        list(pool.map(send, range(n)))
    deadline = time.monotonic() + 10  # the server's request threads end after their last write
    while _threads() > threads + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return threads, _threads(), _rss_mb() - rss


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_serve_soak_threads_and_memory_flat(serve_port: int) -> None:
    def send(i: int) -> None:
        steering = {"vector": "push", "layers": [1], "alpha": 1.0 + (i % 3)}
        status, body = post(serve_port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2,
                                                             "steering": steering})
        assert status == 200, body

    before, after, grown = _soak(send)
    assert abs(after - before) <= 2, (before, after)
    assert grown < 20, f"RSS grew {grown:.1f} MB over 300 steered requests"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_explorer_soak_threads_and_memory_flat(explorer: tuple[int, Any]) -> None:
    port, _ = explorer

    def send(i: int) -> None:
        status, body = post(port, "/api/generate", {
            "prompt": PROMPT, "vector": {"name": "push"}, "layers": [1], "alpha": 1.0 + i % 3,
            "max_tokens": 2})
        assert status == 200, body

    before, after, grown = _soak(send)
    assert abs(after - before) <= 2, (before, after)
    assert grown < 20, f"RSS grew {grown:.1f} MB over 300 steered requests"


# -- shutdown: Ctrl-C and SIGTERM after traffic exit 0 -----------------------------------------

def start(verb: str, model: Path, root: Path) -> tuple[subprocess.Popen[str], int]:
    """`mlux VERB` on a free port; (the process, its port) once it serves."""
    cmd = [sys.executable, "-m", "mlux", verb, "--model", str(model), "--port", "0",
           "--vectors", str(root / "vectors")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port = web.served_port(proc.stderr)  # type: ignore[arg-type]
    assert port is not None, f"mlux {verb} did not start: exit {proc.wait()}"
    return proc, port


def steered_request(verb: str, port: int) -> None:
    if verb == "serve":
        status, body = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3,
                                                       "steering": {"vector": "push"}})
    else:
        status, body = post(port, "/api/generate", {"prompt": PROMPT, "vector": {"name": "push"},
                                                    "layers": [1], "alpha": 2, "max_tokens": 3})
    assert status == 200, body


@pytest.mark.parametrize(("verb", "sig"), [("serve", signal.SIGINT), ("serve", signal.SIGTERM),
                                           ("serve", signal.SIGINT), ("explore", signal.SIGINT),
                                           ("explore", signal.SIGTERM)])
def test_stop_after_traffic_exits_0(setup: dict[str, Any], verb: str, sig: int) -> None:
    proc, port = start(verb, setup["model"], setup["root"])
    try:
        steered_request(verb, port)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "terminate called" not in err and "Traceback" not in err
    assert "stopped" in err


@pytest.mark.parametrize("verb", ["serve", "explore"])
def test_stop_while_a_stream_is_running_exits_0(setup: dict[str, Any], verb: str) -> None:
    """Ctrl-C with a generation in flight: its row is cancelled, the model thread joined."""
    proc, port = start(verb, setup["model"], setup["root"])
    if verb == "serve":
        path, body = "/v1/completions", {"prompt": PROMPT, "max_tokens": 500, "stream": True,
                                          "steering": {"vector": "push"}}
    else:
        path, body = "/api/stream", {"prompt": PROMPT, "vector": {"name": "push"},
                                     "layers": [1], "alpha": 2, "max_tokens": 256}
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        received = b""
        while b"data:" not in received:  # the stream has begun: the model is generating
            received += sock.recv(4096)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "terminate called" not in err and "Traceback" not in err


# -- refused at start, before the model loads ----------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlux", *args], capture_output=True, text=True,
                          timeout=120)


def test_busy_port_is_refused_before_loading(setup: dict[str, Any]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for verb in ("serve", "explore"):
            # A model path that does not exist: had it tried to load, it would say so instead.
            r = run_cli(verb, "--model", str(setup["root"] / "no-model"), "--port", port,
                        "--vectors", str(setup["root"] / "vectors"))
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"mlux {verb}: error: ")
            assert port in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize(("verb", "what", "words"), [
    ("serve", "missing", "does not exist"), ("serve", "file", "is not a folder"),
    ("explore", "file", "is not a folder")])
def test_vector_folder_checked_at_start(setup: dict[str, Any], tmp_path: Path, verb: str,
                                        what: str, words: str) -> None:
    folder = tmp_path / "vectors"
    if what == "file":
        folder.write_text("not a folder")
    r = run_cli(verb, "--model", str(setup["root"] / "no-model"), "--vectors", str(folder),
                "--port", "0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlux {verb}: error: ")
    assert str(folder) in lines[0] and words in lines[0]
