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
from typing import Any, Iterator, Optional

from flask import Blueprint, Flask, Response, current_app, jsonify

from .. import web
from ..detokenize import RowText
from ..model import HookedModel
from ..vector_library import VectorLibrary
from ..web import LOOPBACK_HOSTS, Fields
from .engine import Engine, Job
from .protocol import GenerationRequest, Limits, error_body, parse_request

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
    limits = limits or Limits()
    app = Flask(__name__)
    web.install(app, error_body=error_body, allowed_hosts=allowed_hosts, csp=web.API_CSP,
                max_body_bytes=limits.max_body_bytes)
    app.extensions["mlux_serve"] = {
        "hooked": hooked,
        "engine": Engine(hooked, max_batch=max_batch),
        "library": VectorLibrary(vectors) if vectors else None,
        "limits": limits,
        "model_id": hooked.model_id or "mlux-model",
        "sae": sae,
    }
    app.register_blueprint(bp)
    return app


def _state() -> dict[str, Any]:
    return current_app.extensions["mlux_serve"]


def _load_vector(name: str) -> Any:
    library = _state()["library"]
    if library is None:
        raise ValueError("the server has no vector library (start it with --vectors DIR)")
    return library.load(name)


def _parse(f: Fields, tokens: list[int]) -> GenerationRequest:
    st = _state()
    hooked = st["hooked"]
    return parse_request(f, tokens, limits=st["limits"], num_layers=hooked.num_layers,
                         hidden_size=hooked.hidden_size, load_vector=_load_vector,
                         sae=st.get("sae"))


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
    return _respond(f, _state()["hooked"].tokenizer.encode(prompt), chat=False)


@bp.post("/v1/chat/completions")
def chat_completions():  # noqa: ANN201
    f = Fields(web.json_object())
    messages = [{"role": m.text("role", 64), "content": m.text("content", blank=True)}
                for m in f.objects("messages")]
    hooked = _state()["hooked"]
    if getattr(hooked.tokenizer, "chat_template", None):
        tokens = hooked.encode_chat(messages)
    else:  # no template: plain concatenation, as mlx-lm's server does
        tokens = hooked.tokenizer.encode("\n".join(m["content"] for m in messages))
    return _respond(f, list(tokens), chat=True)


def _respond(f: Fields, tokens: list[int], *, chat: bool) -> Response:
    req = _parse(f, tokens)
    st = _state()
    job = st["engine"].submit(req)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    meta = {"id": rid, "created": int(time.time()), "model": st["model_id"]}
    if req.stream:
        return Response(_sse(job, meta, chat, st["hooked"].tokenizer),
                        mimetype="text/event-stream")
    ids = list(job.tokens())
    text = st["hooked"].tokenizer.decode(ids)
    usage = {"prompt_tokens": len(tokens), "completion_tokens": len(ids),
             "total_tokens": len(tokens) + len(ids)}
    reason = job.finish.reason if job.finish else "stop"
    extra = {"steering_fired": job.fired} if req.steering else {}  # per term, conditions decided
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": reason}
        return jsonify({**meta, "object": "chat.completion", "choices": [choice],
                        "usage": usage, **extra})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return jsonify({**meta, "object": "text_completion", "choices": [choice], "usage": usage,
                    **extra})


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

    text = RowText(tokenizer)
    try:
        yield event(None, None, first=True)
        for token in job.tokens():
            piece = text.add(token)
            if piece:
                yield event(piece, None)
        rest = tokenizer.decode(text.ids)[len(text.text):]  # anything still held back
        fired = {"steering_fired": job.fired} if job.request.steering else {}
        yield event(rest, job.finish.reason if job.finish else "stop", extra=fired)
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
