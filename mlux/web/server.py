"""Binding and running: a non-loopback address only with an explicit opt-in, then werkzeug's
threaded server (never the debugger or the reloader) until Ctrl-C."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from flask import Flask, request
from werkzeug import serving

from .fields import RequestError
from .guard import LOOPBACK_HOSTS, settings_of, to_json

__all__ = ["allowed_hosts_for", "check_bind", "check_port", "client_gone_check", "is_loopback",
           "JSONErrorHandler", "make_server", "post_json", "run_server", "served_port",
           "vector_folder"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str) -> Optional[frozenset[str]]:
    """The Host allow-list for a server bound to `host`: the loopback names (and `host`) on a
    loopback address; None (any Host) on an address the operator chose to expose."""
    return LOOPBACK_HOSTS | {host.strip("[]").lower()} if is_loopback(host) else None


def client_gone_check() -> Callable[[], bool]:
    """For the current request: a check that its client has hung up (its socket reads as
    closed), for work done before any byte of the response is sent. Always False where the
    server does not expose the socket (e.g. the test client)."""
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # closed under us
            return True

    return gone


def vector_folder(path: str | os.PathLike[str], *, must_exist: bool) -> Path:
    """A server's `--vectors DIR`, `~` expanded, checked at start: never anything but a folder
    (its saves and loads would all fail), and, with `must_exist`, there already (a server that
    only reads named vectors cannot make it)."""
    folder = Path(path).expanduser()
    if folder.is_dir() or not (folder.exists() or must_exist):
        return folder
    what = "is not a folder" if folder.exists() else "does not exist"
    raise ValueError(f"the vector library {os.fspath(path)!r} {what} (--vectors DIR: a folder "
                     "of vectors saved by mlux)")


def check_port(host: str, port: int) -> None:
    """Bind and release `host:port` as the server will, so that a busy port is one clear
    ValueError before the model loads (port 0 always passes)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug binds
        try:
            s.bind(address)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is "
                             "another server running there? choose a free port with --port "
                             "(0: any free port)") from None


def check_bind(host: str, *, allow_remote: bool, exposes: str = "the model") -> None:
    """Loopback addresses pass; any other only with `allow_remote` (a `--host` the user typed),
    else ValueError."""
    if not (allow_remote or is_loopback(host)):
        raise ValueError(f"{host} is not a loopback address: anyone who can reach it could use "
                         f"{exposes}, without a password; ask for it explicitly (--host)")


def run_server(app: Flask, host: str, port: int, *, allow_remote: bool = False,
               exposes: str = "the model", name: str = "mlux", path: str = "",
               on_stop: Optional[Callable[[], None]] = None) -> int:
    """`check_bind`, then werkzeug's threaded server until Ctrl-C or SIGTERM; then `on_stop`
    (stop the model's thread: rows in flight are cancelled, so their request threads end
    instead of streaming on) before the socket closes; returns 0. A non-loopback
    address is announced loudly. An app whose Host allow-list holds only loopback names can't be
    served on another address (nobody could reach it): build it with
    `allowed_hosts=allowed_hosts_for(host)`."""
    try:
        server = _start(app, host, port, allow_remote, exposes, name, path)
    except BaseException:
        if on_stop is not None:  # the model's thread is joined on every way out
            on_stop()
        raise
    with _sigterm_interrupts():
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            try:
                if on_stop is not None:
                    on_stop()
                _drain(server)
            finally:
                server.server_close()
    print(f"{name}: stopped", file=sys.stderr, flush=True)
    return 0


def _drain(server: serving.BaseWSGIServer, timeout: float = 10.0) -> None:
    """Wait (bounded) for the requests still being answered once the model has stopped: their
    last write and log line happen before the interpreter exits (a daemon thread writing to
    stderr during interpreter shutdown aborts the process). Idle keep-alive connections are
    not waited on."""
    deadline = time.monotonic() + timeout
    for thread in list(getattr(server, "mlux_busy", ())):
        thread.join(max(0.0, deadline - time.monotonic()))


def _start(app: Flask, host: str, port: int, allow_remote: bool, exposes: str, name: str,
           path: str) -> serving.BaseWSGIServer:
    """The checks, the bound server and its announcement (see `run_server`)."""
    if not 0 <= port < 65536:
        raise ValueError(f"port must be in 0..65535 (0: any free port), got {port}")
    check_bind(host, allow_remote=allow_remote, exposes=exposes)
    settings = settings_of(app)
    allowed = settings.allowed_hosts if settings is not None else None
    if not is_loopback(host):
        if allowed is not None and allowed <= LOOPBACK_HOSTS:
            raise ValueError(f"the app answers only requests addressed to "
                             f"{', '.join(sorted(allowed))}, yet would listen on {host}: build "
                             f"it with allowed_hosts=web.allowed_hosts_for({host!r})")
        bar = "!" * 78
        print(f"{bar}\nWARNING: serving on {host}, not on 127.0.0.1.\nAnyone who can reach "
              f"this port can use {exposes}.\nThere is no authentication. Use only on a network "
              f"you trust.\n{bar}", file=sys.stderr, flush=True)
    server = make_server(app, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"{name}: {_SERVING} http://{shown}:{server.server_port}{path} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    return server


_SERVING = "serving on"
_SERVING_AT = re.compile(_SERVING + r" http://(?:\[[^\]]*\]|[^:/\s]+):(\d+)")


def served_port(lines: Iterable[str]) -> Optional[int]:
    """The port a server started by `run_server` announced, read from its stderr `lines` (for
    scripts and tests that start `mlux serve --port 0` as a command); None if it never did."""
    for line in lines:
        found = _SERVING_AT.search(line)
        if found:
            return int(found.group(1))
    return None


def post_json(port: int, path: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """(status, decoded JSON answer) of a POST to a local server: the one client that scripts
    and tests use on `mlux serve` / `mlux explore` started as commands."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def make_server(app: Flask, host: str, port: int) -> serving.BaseWSGIServer:
    """Werkzeug's threaded server for `app` (no debugger, no reloader), its own errors JSON."""
    server = serving.make_server(host, port, app, threaded=True)
    server.RequestHandlerClass = JSONErrorHandler  # socketserver makes one per connection
    # Closing never waits on request threads (daemons) unboundedly: one whose client stopped
    # reading a stream would block the exit forever; `_drain` waits on the busy ones, bounded.
    server.block_on_close = False
    server.mlux_busy = set()  # type: ignore[attr-defined]  # threads inside a request
    return server


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the server as Ctrl-C does (a clean shutdown, exit 0), not mid-call."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class JSONErrorHandler(serving.WSGIRequestHandler):
    """Werkzeug's request handler, whose own errors (414 URI too long, 431 headers too large,
    400 bad request line, ...: raised before the app sees the request) are JSON in the app's
    error shape like every other error, not http.server's HTML page; it also tells the server
    which threads are inside a request (`_drain`)."""

    def run_wsgi(self) -> None:
        busy = getattr(self.server, "mlux_busy", set())
        me = threading.current_thread()
        busy.add(me)
        try:
            super().run_wsgi()
        finally:
            busy.discard(me)

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        settings = settings_of(self.server.app)  # type: ignore[attr-defined]
        if settings is None:
            super().send_error(code, message, explain)
            return
        if self.request_version == "HTTP/0.9" and b" HTTP/" in (self.raw_requestline or b""):
            self.request_version = "HTTP/1.0"  # a bad HTTP/1.x line: answer with a status line
        phrase = self.responses.get(code, ("error", ""))[0]
        text = f"{phrase}: {message}" if message and message != phrase else phrase
        body = to_json(settings.error_body(RequestError(text, None, code))).encode()
        self.log_error("code %d, message %s", code, message)
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", settings.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
