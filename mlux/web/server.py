"""Binding and running: a non-loopback address only with an explicit opt-in, then werkzeug's
threaded server (never the debugger or the reloader) until Ctrl-C."""

from __future__ import annotations

import ipaddress
import sys
from typing import Optional

from flask import Flask
from werkzeug import serving

from .guard import LOOPBACK_HOSTS, settings_of

__all__ = ["allowed_hosts_for", "check_bind", "is_loopback", "run_server"]


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


def check_bind(host: str, *, allow_remote: bool, exposes: str = "the model") -> None:
    """Loopback addresses pass; any other only with `allow_remote` (a `--host` the user typed),
    else ValueError."""
    if not (allow_remote or is_loopback(host)):
        raise ValueError(f"{host} is not a loopback address: anyone who can reach it could use "
                         f"{exposes}, without a password; ask for it explicitly (--host)")


def run_server(app: Flask, host: str, port: int, *, allow_remote: bool = False,
               exposes: str = "the model", name: str = "mlux", path: str = "") -> int:
    """`check_bind`, then werkzeug's threaded server until Ctrl-C; returns 0. A non-loopback
    address is announced loudly. An app whose Host allow-list holds only loopback names can't be
    served on another address (nobody could reach it): build it with
    `allowed_hosts=allowed_hosts_for(host)`."""
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
    server = serving.make_server(host, port, app, threaded=True)  # no debugger, no reloader
    shown = f"[{host}]" if ":" in host else host
    print(f"{name}: serving on http://{shown}:{server.server_port}{path} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
