"""The one small web toolkit behind mlux's two local servers, the steering explorer and
`mlux serve`. Both run a model for whoever can reach them, without a password, so both get the
same guard rails from here:

- `fields`: `RequestError`, the one error type (HTTP status + the body field at fault; each app
  renders it in its own JSON shape); `json_object()`, the body as a JSON object (415 unless sent
  as JSON; 400 if it does not parse, is nested too deeply or holds a lone surrogate); `Fields`,
  typed reads of its fields (a 400 naming `prompt`, `vector.name`, `steering[1].alpha`...);
  `Limits`, what one request may ask for.
- `guard`: `install(app, error_body=...)`, the Host allow-list, the security headers (CSP,
  nosniff, no referrer, no framing), the body cap and JSON errors for every failure; strict
  JSON out (`FiniteJSON`, `to_json`: NaN and infinities become null, never `Infinity`).
- `server`: `check_bind` (a non-loopback address needs an explicit opt-in), `allowed_hosts_for`
  (the Host allow-list that goes with a bind address) and `run_server` (werkzeug's threaded
  server, never the debugger; a public address is announced with a warning); `check_port` and
  `vector_folder`, the start-up checks made before a model loads; `make_server`, whose own
  errors (414, 431, ...) are JSON like the app's; `client_gone_check`.
- `worker`: `Worker`, the one thread that runs a server's MLX work (request threads hand it
  calls and wait), stopped and joined at shutdown.
"""

from __future__ import annotations

from .fields import MAX_DEPTH, POSITIONS, Fields, Limits, RequestError, json_object
from .guard import (
    API_CSP,
    LOOPBACK_HOSTS,
    PAGE_CSP,
    FiniteJSON,
    WebSettings,
    error_response,
    finite,
    install,
    settings_of,
    to_json,
)
from .server import (
    JSONErrorHandler,
    allowed_hosts_for,
    check_bind,
    check_port,
    client_gone_check,
    is_loopback,
    make_server,
    post_json,
    run_server,
    served_port,
    vector_folder,
)
from .worker import Worker, WorkerClosed

__all__ = [
    "API_CSP", "LOOPBACK_HOSTS", "MAX_DEPTH", "PAGE_CSP", "POSITIONS", "FiniteJSON", "Fields",
    "Limits", "RequestError", "WebSettings", "allowed_hosts_for", "check_bind", "error_response",
    "finite", "install", "is_loopback", "json_object", "run_server", "settings_of", "to_json",
    "JSONErrorHandler", "Worker", "WorkerClosed", "check_port", "client_gone_check", "make_server",
    "post_json", "served_port", "vector_folder",
]
