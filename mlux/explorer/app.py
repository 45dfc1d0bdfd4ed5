"""The explorer's Flask app factory and its per-app state (`app.extensions["mlux"]`).

All mutable state hangs off the app, never off the module, so tests can run several apps
side by side and each has its own model lock and vector cache.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from mlux.builtin import BUILTIN_MODELS
from mlux.explorer.engine import SweepFn, projection_sweep
from mlux.explorer.validation import Limits, ValidationError, VectorRef
from mlux.info import model_info
from mlux.model import HookedModel
from mlux.vector_library import VectorLibrary
from mlux.vectors import SteeringVector

__all__ = ["LOOPBACK_HOSTS", "ExplorerState", "create_app", "default_settings", "get_state"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass
class ExplorerState:
    """One explorer app's model, library, limits and the lock that serialises model work."""

    hooked: HookedModel
    library: VectorLibrary
    limits: Limits
    info: dict[str, Any]
    defaults: dict[str, Any]
    sweeps: dict[str, SweepFn]
    lock_timeout: float = 300.0
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS
    max_vectors: int = 32
    lock: threading.Lock = field(default_factory=threading.Lock)
    vectors: OrderedDict[str, SteeringVector] = field(default_factory=OrderedDict)
    _vectors_lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire_model(self) -> None:
        """Wait for the model (requests queue here); 503 after `lock_timeout` seconds."""
        if not self.lock.acquire(timeout=self.lock_timeout):
            raise ValidationError(None, f"the model stayed busy for {self.lock_timeout:g} s; "
                                        "try again", status=503)

    def remember(self, vector: SteeringVector) -> str:
        """Keep a computed vector under a fresh id; the oldest are dropped past `max_vectors`."""
        vid = secrets.token_hex(8)
        with self._vectors_lock:
            self.vectors[vid] = vector
            while len(self.vectors) > self.max_vectors:
                self.vectors.popitem(last=False)
        return vid

    def resolve(self, ref: VectorRef, field: str = "vector") -> SteeringVector:
        """The referenced vector, checked against this model's width and depth; errors name
        `field.id` / `field.name` (or `field` itself when it is not "vector")."""
        sub = (lambda key: f"{field}.{key}") if field == "vector" else (lambda key: field)
        if ref.id is not None:
            with self._vectors_lock:
                vector = self.vectors.get(ref.id)
            if vector is None:
                raise ValidationError(sub("id"), f"no computed vector with id {ref.id!r} "
                                      f"(the last {self.max_vectors} are kept)", status=404)
        else:
            try:
                vector = self.library.load(ref.name)  # type: ignore[arg-type]
            except FileNotFoundError:
                raise ValidationError(sub("name"), f"no vector named {ref.name!r} in the "
                                                   "library", status=404) from None
            except ValueError as exc:
                raise ValidationError(sub("name"), str(exc), status=422) from None
        try:
            vector.check_compatible(self.hooked.hidden_size, self.hooked.num_layers)
        except ValueError as exc:
            raise ValidationError(field, str(exc)) from None
        return vector


def get_state() -> ExplorerState:
    return current_app.extensions["mlux"]


def default_settings(hooked: HookedModel) -> dict[str, Any]:
    """Starting values for the page: contrast prompts, a prompt, a layer and an alpha."""
    from mlux.demo import HAPPY_SAD

    pos, neg = HAPPY_SAD
    prompt, alpha = "Tell me about your day.", 4.0
    builtin = hooked.model_id in BUILTIN_MODELS
    if builtin:
        try:  # the toy's own contrast set: the feature it was trained to carry
            from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS

            (pos, neg), prompt, alpha = CONTRAST_PROMPTS["sentiment"], TEST_PROMPTS[1], 2.0
        except (ImportError, KeyError, IndexError):
            pass
    layers = hooked.config.get_recommended_layers("default") or [hooked.num_layers // 2]
    has_template = getattr(hooked.tokenizer, "chat_template", None) is not None
    return {"positive": list(pos), "negative": list(neg), "prompt": prompt,
            "layers": [int(layers[0])], "alpha": alpha, "alpha_range": max(20.0, 2.5 * alpha),
            "compare_alphas": [-alpha, alpha, 2 * alpha], "max_tokens": 32,
            "chat": bool(has_template and not builtin)}


def create_app(
    hooked: HookedModel,
    *,
    vectors_dir: str | os.PathLike[str],
    limits: Optional[Limits] = None,
    defaults: Optional[Mapping[str, Any]] = None,
    sweeps: Optional[Mapping[str, SweepFn]] = None,
    lock_timeout: float = 300.0,
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS,
) -> Flask:
    """The explorer app for an already loaded model.

    `sweeps` adds layer-sweep modes next to the built-in "projection" (see `engine.SweepFn`);
    `allowed_hosts=None` accepts any Host header (for `--host`), else requests naming another
    host are refused, which stops DNS-rebinding pages from reaching a loopback server.
    """
    from mlux.explorer.api import bp

    limits = limits or Limits()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=limits.max_body_bytes, DEBUG=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    settings = default_settings(hooked)
    settings.update(defaults or {})
    app.extensions["mlux"] = ExplorerState(
        hooked=hooked, library=VectorLibrary(os.path.expanduser(os.fspath(vectors_dir))),
        limits=limits, info=model_info(hooked), defaults=settings,
        sweeps={"projection": projection_sweep, **(sweeps or {})}, lock_timeout=lock_timeout,
        allowed_hosts=allowed_hosts)
    app.register_blueprint(bp)
    app.before_request(_check_host)
    app.after_request(_security_headers)
    return app


def _check_host() -> Optional[Response]:
    allowed = get_state().allowed_hosts
    host = urlsplit("//" + request.host).hostname or ""
    if allowed is not None and host not in allowed:
        from flask import jsonify

        response = jsonify(error=f"requests must address this server as one of "
                                 f"{', '.join(sorted(allowed))}", field=None)
        response.status_code = 400
        return response
    return None


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response
