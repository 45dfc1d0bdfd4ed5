"""`mlux serve`: an OpenAI-compatible HTTP API whose requests may carry a `steering` object.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (streaming as
server-sent events, as the OpenAI API does it). Requests without `steering` are the plain model.
The app has the explorer's guard rails (`mlux.web.install`: Host allow-list, security headers,
body cap); every error, 404s and crashes included, is an OpenAI error object.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from flask import Blueprint, Flask, Response, current_app, jsonify

from .. import web
from ..model import HookedModel
from ..vector_library import VectorLibrary
from ..web import LOOPBACK_HOSTS, Fields, RequestError
from .engine import Engine, Job
from .protocol import ROLES, GenerationRequest, Limits, check_model, error_body, parse_request
from .stops import StopText

__all__ = ["create_server_app"]

bp = Blueprint("openai", __name__)


def create_server_app(hooked: HookedModel, *, vectors: Optional[str | Path] = None,
                      limits: Optional[Limits] = None, max_batch: int = 8,
                      allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS,
                      sae: Any = None) -> Flask:
    """The server app for a loaded model; its engine thread starts now (close it with
    `app.extensions["mlux_serve"]["engine"].close()`). `allowed_hosts` as for the explorer:
    None accepts any Host header (a server bound to a public address on purpose), see
    `mlux.web.allowed_hosts_for`. `sae` (a `mlux.sae.SparseAutoencoder`) lets requests clamp
    one of its features (`"sae_clamp": {"feature": int, "value": number}`)."""
    # The folder must exist: a server that can load no named vector should not start.
    library = (VectorLibrary(web.vector_folder(vectors, must_exist=True))
               if vectors is not None else None)
    limits = limits or Limits()
    app = Flask(__name__)
    web.install(app, error_body=error_body, allowed_hosts=allowed_hosts, csp=web.API_CSP,
                max_body_bytes=limits.max_body_bytes)
    app.extensions["mlux_serve"] = {
        "hooked": hooked,
        "engine": Engine(hooked, max_batch=max_batch),
        "library": library,
        "limits": limits,
        "model_id": hooked.model_id or "mlux-model",
        "sae": sae,
    }
    app.register_blueprint(bp)
    return app


def _state() -> dict[str, Any]:
    return current_app.extensions["mlux_serve"]


def _load_vector(library: Optional[VectorLibrary], name: str) -> Any:
    if library is None:
        raise ValueError("the server has no vector library (start it with --vectors DIR)")
    return library.load(name)


def _parse(f: Fields, encode: Callable[[], list[int]]) -> GenerationRequest:
    """Check the model and read the request on the engine's thread (vectors are arrays)."""
    st = _state()
    check_model(f, st["model_id"])
    hooked, library = st["hooked"], st["library"]
    return st["engine"].call(
        lambda: parse_request(f, encode(), limits=st["limits"], num_layers=hooked.num_layers,
                              hidden_size=hooked.hidden_size,
                              load_vector=lambda name: _load_vector(library, name),
                              sae=st.get("sae")))


@bp.get("/v1/models")
def models():  # noqa: ANN201
    return jsonify({"object": "list", "data": [
        {"id": _state()["model_id"], "object": "model", "created": 0, "owned_by": "mlux"}]})


@bp.post("/v1/completions")
def completions():  # noqa: ANN201
    f = Fields(web.json_object())
    prompt = f.text("prompt", blank=True)
    if not prompt:
        raise f.fail("prompt", "must be a non-empty string")
    tokenizer = _state()["hooked"].tokenizer
    return _respond(f, lambda: tokenizer.encode(prompt), chat=False)


@bp.post("/v1/chat/completions")
def chat_completions():  # noqa: ANN201
    f = Fields(web.json_object())
    messages = [_message(m) for m in f.objects("messages")]
    hooked = _state()["hooked"]

    def encode() -> list[int]:
        if getattr(hooked.tokenizer, "chat_template", None):
            try:
                return list(hooked.encode_chat(messages))
            except Exception as exc:  # the template refused them (e.g. roles out of order)
                raise RequestError(f"the model's chat template cannot format these messages: "
                                   f"{exc}", "messages") from None
        # no template: plain concatenation, as mlx-lm's server does
        return hooked.tokenizer.encode("\n".join(m["content"] for m in messages))

    return _respond(f, encode, chat=True)


def _message(m: Fields) -> dict[str, str]:
    """One chat message: a known role and content with a non-space character."""
    role = m.text("role", 64)
    if role not in ROLES:
        raise m.fail("role", f"must be one of {', '.join(ROLES)}; got {role[:40]!r}")
    return {"role": role, "content": m.text("content")}  # type: ignore[dict-item]


def _respond(f: Fields, encode: Callable[[], list[int]], *, chat: bool) -> Response:
    req = _parse(f, encode)
    st = _state()
    job = st["engine"].submit(req)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    meta = {"id": rid, "created": int(time.time()), "model": st["model_id"]}
    tokenizer = st["hooked"].tokenizer
    if req.stream:
        return Response(_sse(job, meta, chat, tokenizer), mimetype="text/event-stream")
    gone = web.client_gone_check()  # a client that hangs up cancels its generation
    text = StopText(tokenizer, req.stop)
    try:
        body = "".join(_deltas(job, text, alive=lambda: not gone()))
    finally:
        job.cancel()
    n = len(text.ids)
    usage = {"prompt_tokens": len(req.prompt_tokens), "completion_tokens": n,
             "total_tokens": len(req.prompt_tokens) + n}
    reason = _reason(job, text)
    extra = {"steering_fired": job.fired} if req.steering else {}  # per term, conditions decided
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": body},
                  "finish_reason": reason}
        return jsonify({**meta, "object": "chat.completion", "choices": [choice],
                        "usage": usage, **extra})
    choice = {"index": 0, "text": body, "logprobs": None, "finish_reason": reason}
    return jsonify({**meta, "object": "text_completion", "choices": [choice], "usage": usage,
                    **extra})


def _deltas(job: Job, text: StopText, alive: Optional[Callable[[], bool]] = None
            ) -> Iterator[str]:
    """The job's text as deltas, cut at its stop strings (the job is cancelled then)."""
    for token in job.tokens(alive):
        piece = text.add(token)
        if piece:
            yield piece
        if text.stopped:
            job.cancel()
            return
    rest = text.finish()
    if rest:
        yield rest


def _reason(job: Job, text: StopText) -> str:
    """"stop" for a stop string or the model's end of text, "length" at max_tokens."""
    if text.stopped or job.finish is None:
        return "stop"
    return job.finish.reason


def _sse(job: Job, meta: dict[str, Any], chat: bool, tokenizer: Any) -> Iterator[str]:
    """Stream text deltas; a client that disconnects closes this generator, which cancels.
    (It runs after the request context is gone, so it is handed what it needs.)"""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: Optional[str], reason: Optional[str], first: bool = False,
              extra: Optional[dict[str, Any]] = None) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if first else {}
            if delta:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        body = {**meta, "object": kind, "choices": [choice], **(extra or {})}
        return f"data: {json.dumps(body)}\n\n"

    text = StopText(tokenizer, job.request.stop)
    try:
        yield event(None, None, first=True)
        for piece in _deltas(job, text):
            yield event(piece, None)
        fired = {"steering_fired": job.fired} if job.request.steering else {}
        yield event(None, _reason(job, text), extra=fired)
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
