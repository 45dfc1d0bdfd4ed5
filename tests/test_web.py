"""mlux.web, the toolkit both servers share: the field reader, the body reader, the one error type
rendered in each server's shape, the Host check and headers, the bind check and the server
start. The servers' own tests (test_serve.py, test_explorer_*.py) drive it through their routes;
here it runs on a bare Flask app, and the explorer and `mlux serve` are held to one set of
positions."""

from __future__ import annotations

import ast
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify

from mlux import HookedModel, web
from mlux.explorer import create_app
from mlux.explorer.api import error_body as explorer_error_body
from mlux.positions import resolve_positions
from mlux.serve import create_server_app
from mlux.serve.protocol import error_body as openai_error_body
from mlux.testing import save_tiny_model
from mlux.web import Fields, RequestError


def field_error(read: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        read()
    return info.value


# -- the field reader ----------------------------------------------------------------------------

def test_every_typed_read_names_its_field() -> None:
    f = Fields({"s": " ", "n": 10**400, "x": float("nan"), "i": 2.0, "b": 1, "l": [1, 1],
                "c": "z", "t": ["a", 3], "o": [{"k": 1}, 5], "big": 10**4000}, prefix="req.")
    cases = [
        (lambda: f.text("s"), "req.s", "non-empty string"),
        (lambda: f.text("missing"), "req.missing", "is required"),
        (lambda: f.number("n", -1, 1), "req.n", "finite"),
        (lambda: f.number("x", -1, 1), "req.x", "finite"),
        (lambda: f.integer("i", 0, 5), "req.i", "integer"),
        (lambda: f.integer("big", 0, 5), "req.big", "..."),  # the value is shown cut short
        (lambda: f.boolean("b", False), "req.b", "true or false"),
        (lambda: f.layers("l", 4, required=True), "req.l", "repeat"),
        (lambda: f.choice("c", ("a", "b"), "a"), "req.c", "one of a, b"),
        (lambda: f.texts("t", 4, 10), "req.t[1]", "non-empty string"),
        (lambda: f.objects("o"), "req.o[1]", "must be an object"),
        (lambda: f.numbers("l", 1), "req.l", "at most 1"),
    ]
    for read, name, words in cases:
        err = field_error(read)
        assert (err.field, err.status) == (name, 400) and words in err.message, name
        assert err.message.startswith(name)
    assert len(field_error(lambda: f.integer("big", 0, 5)).message) < 100
    assert f.text("s", blank=True) == " " and f.number("i") == 2.0
    assert f.number("absent", default=1.5) == 1.5 and f.integer("absent", 0, 1) is None
    with pytest.raises(RequestError):
        f.objects("o")
    inner = Fields({"o": [{"k": 1}]}, "req.").objects("o")[0]
    assert field_error(inner.done).field == "req.o[0].k"


def test_done_refuses_unread_fields_and_lists_the_known_ones() -> None:
    f = Fields({"alpha": 1.0, "alpah": 2.0})
    assert f.number("alpha") == 1.0
    err = field_error(f.done)
    assert err.field == "alpah" and "known: alpha" in err.message


def test_positions_are_exactly_what_resolve_positions_accepts() -> None:
    for name in web.POSITIONS:
        resolve_positions(name, 5)  # every name the web offers, the steering code takes
        assert Fields({"positions": name}).positions() == name
    assert Fields({}).positions() == "all" and Fields({"positions": None}).positions() == "all"
    for bad in ("middle", "ALL", "", 3, [0, 2], True, {"start": 0}):
        err = field_error(lambda bad=bad: Fields({"where": bad}).positions("where"))
        assert err.field == "where" and "all, prompt, generated" in err.message


def test_numbers_past_float_range_and_non_finite_are_refused() -> None:
    for value in (10**400, -(10**400), math.inf, -math.inf, math.nan):
        err = field_error(lambda value=value: Fields({"v": [0.5, value]}).numbers("v"))
        assert err.field == "v[1]"
    assert Fields({"v": [1, 2.5]}).numbers("v", 2, -3, 3) == [1.0, 2.5]


# -- a bare app with the guard rails -------------------------------------------------------------

def bare_app(allowed_hosts: Any = web.LOOPBACK_HOSTS) -> Flask:
    app = Flask(__name__)
    web.install(app, error_body=lambda e: {"problem": e.message, "at": e.field},
                allowed_hosts=allowed_hosts, max_body_bytes=20_000)

    @app.post("/echo")
    def echo() -> Any:
        f = Fields(web.json_object())
        return jsonify(n=f.integer("n", 0, 9, 0))

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("kaboom")

    return app


def test_the_body_reader_and_errors_in_the_apps_shape() -> None:
    c = bare_app().test_client()
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    cases = [
        (c.post("/echo", json={"n": 3}), 200, None),
        (c.post("/echo", data='{"n": 3}', content_type="text/plain"), 415, None),
        (c.post("/echo", data="{", content_type="application/json"), 400, None),
        (c.post("/echo", json=[1]), 400, None),
        (c.post("/echo", json={"n": 10}), 400, "n"),
        (c.post("/echo", data=deep, content_type="application/json"), 400, None),
        (c.post("/echo", data='{"a": {"\\ud800": 1}}', content_type="application/json"), 400,
         "a"),
        (c.post("/echo", data='{"a": [{"b": "\\udc00x"}]}', content_type="application/json"),
         400, "a[0].b"),
        (c.post("/echo", json={"pad": "x" * 20_000}), 413, None),
        (c.get("/echo"), 405, None),
        (c.get("/nowhere"), 404, None),
        (c.get("/boom"), 500, None),
    ]
    for i, (r, status, field) in enumerate(cases):
        assert r.status_code == status, (i, r.data)
        if status != 200:
            assert set(r.json) == {"problem", "at"} and r.json["at"] == field, (i, r.json)
    assert "kaboom" in cases[-1][0].json["problem"]


def test_host_check_and_headers() -> None:
    c = bare_app().test_client()
    for host in ("evil.example", "evil.example:5001", "localhost.evil.example", "[::1"):
        r = c.get("/nowhere", headers={"Host": host})
        assert r.status_code == 400 and "Host" in r.json["problem"], host
    for host in ("localhost", "127.0.0.1:80", "[::1]:5001"):
        assert c.post("/echo", json={}, headers={"Host": host}).status_code == 200, host
    r = c.post("/echo", json={})
    assert r.headers["Content-Security-Policy"] == web.API_CSP
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    anyone = bare_app(allowed_hosts=None).test_client()
    assert anyone.post("/echo", json={}, headers={"Host": "gpu.lan"}).status_code == 200


def test_one_error_two_shapes() -> None:
    err = RequestError("alpha must be a number", "steering.alpha")
    assert explorer_error_body(err) == {"error": "alpha must be a number",
                                        "field": "steering.alpha"}
    assert openai_error_body(err) == {"error": {"message": "alpha must be a number",
                                                "type": "invalid_request_error",
                                                "param": "steering.alpha", "code": None}}
    assert openai_error_body(RequestError("x", status=503))["error"]["type"] == "server_error"


def test_responses_are_strict_json() -> None:
    """Python writes NaN and Infinity, which JSON.parse refuses: the apps write null."""
    app = bare_app()
    app.json.sort_keys = False

    @app.get("/floats")
    def floats() -> Any:
        return jsonify(norms=[1.5, math.inf, -math.inf], p={"x": (math.nan, 2)}, z=0, a=1)

    r = app.test_client().get("/floats")
    assert r.data.decode().replace(" ", "").replace("\n", "") == (
        '{"norms":[1.5,null,null],"p":{"x":[null,2]},"z":0,"a":1}')
    assert web.to_json({"v": [math.nan, 1.0]}) == '{"v": [null, 1.0]}'
    assert web.to_json([1, "a"]) == '[1, "a"]'
    with pytest.raises(TypeError):
        web.to_json(object())


# -- binding and starting ------------------------------------------------------------------------

def test_bind_check() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        web.check_bind(host, allow_remote=False)
        assert web.allowed_hosts_for(host) >= web.LOOPBACK_HOSTS
    assert "127.0.0.2" in web.allowed_hosts_for("127.0.0.2")
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(ValueError, match="not a loopback address"):
            web.check_bind(host, allow_remote=False)
        assert web.allowed_hosts_for(host) is None
    web.check_bind("0.0.0.0", allow_remote=True)  # asked for explicitly


class FakeServer:
    """werkzeug's server as far as run_server uses it; Ctrl-C as soon as it serves."""

    server_port = 4321

    def __init__(self, log: list[Any], host: str, port: int, app: Any, threaded: bool) -> None:
        self.log = log
        log.append(("made", host, port, app, threaded))

    def serve_forever(self) -> None:
        assert self.RequestHandlerClass is web.JSONErrorHandler  # its own errors are JSON too
        raise KeyboardInterrupt

    def server_close(self) -> None:
        self.log.append(("closed",))


def test_run_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import werkzeug.serving

    log: list[Any] = []
    monkeypatch.setattr(werkzeug.serving, "make_server",
                        lambda *args, **kw: FakeServer(log, *args, **kw))
    app = bare_app()
    assert web.run_server(app, "127.0.0.1", 0, name="test", path="/v1") == 0
    assert log == [("made", "127.0.0.1", 0, app, True), ("closed",)]
    err = capsys.readouterr().err
    assert "test: serving on http://127.0.0.1:4321/v1" in err and "test: stopped" in err
    assert web.served_port(err.splitlines()) == 4321 and web.served_port(["nothing"]) is None
    with pytest.raises(ValueError, match="loopback"):
        web.run_server(app, "0.0.0.0", 0)
    with pytest.raises(ValueError, match="port"):
        web.run_server(app, "127.0.0.1", 70000)
    with pytest.raises(ValueError, match=r"allowed_hosts_for\('::'\)"):
        web.run_server(app, "::", 0, allow_remote=True)  # its Host check would refuse everyone
    assert len(log) == 2 and capsys.readouterr().err == ""  # refused before a socket opened
    assert web.run_server(bare_app(web.allowed_hosts_for("::")), "::", 0, allow_remote=True) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "http://[::]:4321" in err
    assert web.served_port(err.splitlines()) == 4321


# -- both servers: one set of positions, no import cycle -----------------------------------------

@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> HookedModel:
    folder = tmp_path_factory.mktemp("web") / "tiny"
    return HookedModel.from_pretrained(str(save_tiny_model(folder, "llama", num_layers=4)))


def test_explorer_and_serve_accept_the_same_positions(hooked: HookedModel, tmp_path: Path
                                                      ) -> None:
    explorer = create_app(hooked, vectors_dir=tmp_path).test_client()
    serve_app = create_server_app(hooked)
    serve = serve_app.test_client()
    try:
        vid = explorer.post("/api/compute", json={"positive": ["w10 w11"], "negative": ["w20 w21"]}
                            ).json["id"]
        inline = [0.1] * hooked.hidden_size
        for positions in (*web.POSITIONS, None, "middle", "ALL", 3, [0, 2]):
            a = explorer.post("/api/generate", json={
                "prompt": "w30 w31", "vector": {"id": vid}, "layers": [1], "alpha": 1.0,
                "max_tokens": 2, "positions": positions})
            b = serve.post("/v1/completions", json={
                "prompt": "w30 w31", "max_tokens": 2,
                "steering": {"vector": inline, "layers": [1], "positions": positions}})
            assert a.status_code == b.status_code, (positions, a.json, b.json)
            if a.status_code != 200:
                assert a.json["field"] == "positions"
                assert b.json["error"]["param"] == "steering.positions"
                assert a.json["error"].split()[1:] == b.json["error"]["message"].split()[1:]
    finally:
        serve_app.extensions["mlux_serve"]["engine"].close()


MLUX = Path(web.__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every `mlux...` module named in an import anywhere in the file, relative ones resolved."""
    parts = list(path.relative_to(MLUX.parent).with_suffix("").parts)
    package = parts[:-1]  # a module's package; an __init__'s is its own folder
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            out |= {module, *(f"{module}.{a.name}" for a in node.names)}
    return {m for m in out if m.startswith("mlux")}


def test_the_servers_import_downwards() -> None:
    """web knows neither server, and what the factories are built from never imports its
    factory or package (the old explorer/api <-> explorer/app cycle), not even in a function."""
    for path in (MLUX / "web").glob("*.py"):
        servers = {m for m in _imports(path) if m.split(".")[1:2] in (["explorer"], ["serve"])}
        assert not servers, path.name
    below = {"explorer": ("api", "state", "validation", "engine"),
             "serve": ("protocol", "engine")}
    for folder, names in below.items():
        for name in names:
            imported = _imports(MLUX / folder / f"{name}.py")
            assert not imported & {f"mlux.{folder}.app", f"mlux.{folder}"}, (folder, name)
    assert "mlux.web" in _imports(MLUX / "explorer" / "api.py")  # the parser sees imports
    assert "mlux.web.fields" in _imports(MLUX / "web" / "guard.py")  # relative ones too


# -- the one model thread ------------------------------------------------------------------------

def test_worker_runs_calls_in_order_on_its_thread() -> None:
    worker = web.Worker("test-worker")
    try:
        seen: list[tuple[int, int]] = []
        futures = [worker.submit(lambda i=i: seen.append((i, threading.get_ident())))
                   for i in range(5)]
        for f in futures:
            f.result(10)
        assert [i for i, _ in seen] == list(range(5))
        assert {t for _, t in seen} == {worker._thread.ident} != {threading.get_ident()}
        assert worker.call(lambda a, b: a + b, 2, b=3) == 5
        with pytest.raises(ZeroDivisionError):  # a call's error reaches its caller...
            worker.call(lambda: 1 / 0)
        assert worker.call(lambda: "alive") == "alive"  # ...and the worker carries on
    finally:
        worker.close()
    assert not worker._thread.is_alive()
    with pytest.raises(web.WorkerClosed):
        worker.submit(lambda: None)


def test_worker_stream_stops_when_the_reader_leaves() -> None:
    worker = web.Worker("test-stream")
    made: list[int] = []
    closed = threading.Event()

    stop = threading.Event()

    def numbers() -> Any:
        try:
            for i in range(1000):
                made.append(i)
                yield i
                if i == 5:
                    stop.wait(10)  # the reader leaves about now
        finally:
            closed.set()

    try:
        items = worker.stream(numbers, stop)
        assert [next(items) for _ in range(3)] == [0, 1, 2]
        items.close()  # the client left: returns once the worker closed the iterator
        assert stop.is_set() and closed.is_set() and len(made) <= 7
        assert list(worker.stream(lambda: iter(range(4)), threading.Event())) == [0, 1, 2, 3]

        def fails() -> Any:
            yield 1
            raise ValueError("bad")

        with pytest.raises(ValueError, match="bad"):
            list(worker.stream(fails, threading.Event()))
    finally:
        worker.close()


def test_worker_close_cancels_waiting_calls_and_runs_final() -> None:
    worker = web.Worker("test-close")
    started, gate, order = threading.Event(), threading.Event(), []

    def running() -> bool:
        started.set()
        return gate.wait(10)

    first = worker.submit(running)
    waiting = worker.submit(order.append, "never")
    assert started.wait(10)
    closer = threading.Thread(target=worker.close, kwargs={"final": lambda: order.append("final")})
    closer.start()
    while not waiting.done():  # close cancels what has not started before it joins
        gate.wait(0.01)
    gate.set()
    closer.join(30)
    assert first.result() is True and waiting.cancelled() and order == ["final"]


def test_mlx_from_many_threads_through_one_worker_keeps_threads_flat() -> None:
    """MLX keeps a stream thread for every thread that ever evaluated an array; work handed to
    the worker from 50 short-lived threads leaves the process's thread count where it was."""
    import os

    import mlx.core as mx

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc")
    worker = web.Worker("test-mlx")
    try:
        worker.call(lambda: mx.eval(mx.ones(4) * 2))
        before = len(os.listdir("/proc/self/task"))
        for _ in range(50):
            t = threading.Thread(target=lambda: worker.call(
                lambda: float((mx.arange(8) * 3).sum().item())))
            t.start()
            t.join()
        assert len(os.listdir("/proc/self/task")) <= before + 2  # (a thread may still be exiting)
    finally:
        worker.close()


def test_worker_stream_whose_maker_fails_raises_in_the_reader() -> None:
    worker = web.Worker("test-maker")

    def maker() -> Any:
        raise KeyError("no such thing")

    try:
        with pytest.raises(KeyError, match="no such thing"):
            list(worker.stream(maker, threading.Event()))
    finally:
        worker.close()
