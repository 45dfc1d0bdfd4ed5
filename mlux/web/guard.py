"""The guard rails `install` puts on a Flask app: the Host allow-list (a DNS-rebinding page
reaches 127.0.0.1 but still sends its own Host, and is refused), the security headers, the body
cap, and JSON errors for every failure (404/405/413 and crashes too) in the app's own shape."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from .fields import Limits, RequestError

__all__ = ["API_CSP", "LOOPBACK_HOSTS", "PAGE_CSP", "FiniteJSON", "WebSettings", "error_response",
           "finite", "install", "settings_of", "to_json"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# The explorer's page: its own scripts, styles and API only; nobody may frame it.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# A JSON-only API: nothing a browser would render may load anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_KEY = "mlux.web"
log = logging.getLogger("mlux.web")


@dataclass(frozen=True)
class WebSettings:
    """What `install` put on an app (`app.extensions["mlux.web"]`)."""

    error_body: Callable[[RequestError], dict[str, Any]]
    allowed_hosts: Optional[frozenset[str]]
    csp: str
    no_store_prefix: str


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Strict JSON, as browsers' JSON.parse reads it: a non-finite float becomes null."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # NaN or Infinity somewhere: rare, so only then walk the value
        return json.dumps(finite(value), allow_nan=False)


class FiniteJSON(DefaultJSONProvider):
    """Flask's JSON provider writing strict JSON (a non-finite float becomes null) instead of
    Python's `NaN` / `Infinity`, which no JSON parser accepts."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return super().dumps(obj, allow_nan=False, **kwargs)
        except ValueError:
            return super().dumps(finite(obj), allow_nan=False, **kwargs)


def install(app: Flask, *, error_body: Callable[[RequestError], dict[str, Any]],
            allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS, csp: str = API_CSP,
            max_body_bytes: int = Limits.max_body_bytes, no_store_prefix: str = "/") -> None:
    """Guard `app`: requests whose Host is not in `allowed_hosts` (None: any) get a 400, every
    response carries the security headers (and `Cache-Control: no-store` under
    `no_store_prefix`), bodies over `max_body_bytes` a 413, and every error, crashes included,
    is JSON as `error_body(RequestError)` shapes it, strict JSON at that (`FiniteJSON`)."""
    app.config.update(MAX_CONTENT_LENGTH=max_body_bytes, DEBUG=False)
    sort_keys = app.json.sort_keys  # type: ignore[attr-defined]
    app.json = FiniteJSON(app)
    app.json.sort_keys = sort_keys
    app.extensions[_KEY] = WebSettings(error_body, allowed_hosts, csp, no_store_prefix)
    app.before_request(_check_host)
    app.after_request(_security_headers)
    app.register_error_handler(RequestError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _crash)


def settings_of(app: Optional[Flask] = None) -> Optional[WebSettings]:
    """What `install` put on `app` (default: the current app); None if it was not installed."""
    return (app or current_app).extensions.get(_KEY)


def _settings() -> WebSettings:
    return current_app.extensions[_KEY]


def error_response(exc: RequestError) -> tuple[Response, int]:
    return jsonify(_settings().error_body(exc)), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    return error_response(RequestError(exc.description or exc.name, None, exc.code or 500))


def _crash(exc: Exception) -> tuple[Response, int]:
    log.exception("request failed: %s %s", request.method, request.path)
    return error_response(RequestError(f"internal error: {type(exc).__name__}: {exc}",
                                       None, 500))


def _check_host() -> None:
    allowed = _settings().allowed_hosts
    if allowed is None:
        return
    try:
        host = urlsplit("//" + request.host).hostname or ""
    except ValueError:  # e.g. "[::1" (an unclosed IPv6 literal)
        host = ""
    if host not in allowed:
        raise RequestError("requests must address this server as one of "
                           f"{', '.join(sorted(allowed))} (the Host header)", None, 400)


def _security_headers(response: Response) -> Response:
    settings = _settings()
    headers = response.headers
    headers.setdefault("Content-Security-Policy", settings.csp)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if request.path.startswith(settings.no_store_prefix):
        headers["Cache-Control"] = "no-store"
    return response

