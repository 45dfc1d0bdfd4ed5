"""The explorer blueprint: the page, the JSON API and the server-sent-event stream.

Every model call runs under the app's lock and every hook is installed by a context manager
or a generator whose `finally` removes it, so hooks never outlive a request; a streamed
response that is closed early (the client went away) closes the generation with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Iterator

from flask import Blueprint, Response, jsonify, render_template

from mlux.detokenize import RowText
from mlux.explorer.engine import (
    generated_projections,
    prompt_tokens,
    stream_rows,
    unit_vectors,
)
from mlux.explorer.state import ExplorerState, get_state
from mlux.explorer.validation import (
    GenerateRequest,
    VectorRef,
    parse_compute,
    parse_generate,
    parse_save,
    parse_sweep,
)
from mlux.extract import extract_steering_vectors
from mlux.steering import Steering
from mlux.vector_library import validate_name
from mlux.vectors import SteeringVector
from mlux.web import RequestError, json_object

__all__ = ["bp", "describe_vector", "error_body", "generation_events"]

bp = Blueprint("explorer", __name__)
log = logging.getLogger("mlux.explorer")


def error_body(exc: RequestError) -> dict[str, Any]:
    """The explorer's error shape: `{"error": message, "field": the field at fault or null}`."""
    return {"error": exc.message, "field": exc.field}


def _name(name: str) -> str:
    try:
        return validate_name(name)
    except ValueError as exc:
        raise RequestError(str(exc), "name") from None


@contextlib.contextmanager
def _model(state: ExplorerState) -> Iterator[None]:
    state.acquire_model()
    try:
        yield
    except ValueError as exc:  # the library's own checks (e.g. prompts that encode to nothing)
        raise RequestError(str(exc)) from None
    finally:
        state.lock.release()


def describe_vector(vector: SteeringVector) -> dict[str, Any]:
    norms = vector.norms
    return {"layers": vector.layers, "norms": [norms[i] for i in vector.layers],
            "hidden_size": vector.hidden_size, "method": vector.method,
            "num_pairs": vector.num_pairs, "model_id": vector.model_id, "created": vector.created}


# -- page and model ------------------------------------------------------------------------------

@bp.get("/")
def index() -> str:
    return render_template("index.html", model_id=get_state().hooked.model_id)


@bp.get("/api/model")
def model() -> Response:
    state = get_state()
    return jsonify(info=state.info, defaults=state.defaults, limits=state.limits.to_dict(),
                   sweeps=list(state.sweeps))


@bp.post("/api/compute")
def compute() -> Response:
    state = get_state()
    req = parse_compute(json_object(), state.limits)
    hooked = state.hooked
    if req.chat and getattr(hooked.tokenizer, "chat_template", None) is None:
        raise RequestError("this model's tokenizer has no chat template", "chat")
    with _model(state):
        directions = extract_steering_vectors(hooked, req.positive, req.negative, "all",
                                              method=req.method, chat=req.chat)
    vector = SteeringVector(directions, model_id=hooked.model_id, method=req.method,
                            num_pairs=min(len(req.positive), len(req.negative)),
                            metadata={"positive": req.positive, "negative": req.negative,
                                      "chat": req.chat, "source": "mlux explorer"})
    return jsonify(id=state.remember(vector), **describe_vector(vector))


# -- generation ----------------------------------------------------------------------------------

def _generation(state: ExplorerState) -> tuple[GenerateRequest, SteeringVector]:
    req = parse_generate(json_object(), state.limits, state.hooked.num_layers)
    vector = state.resolve(req.vector)
    missing = [i for i in req.layers if i not in vector]
    if missing:
        raise RequestError(f"the vector has no direction at layers {missing}; it has "
                           f"{vector.layers}", "layers")
    if req.chat and getattr(state.hooked.tokenizer, "chat_template", None) is None:
        raise RequestError("this model's tokenizer has no chat template", "chat")
    return req, vector


def generation_events(state: ExplorerState, req: GenerateRequest, vector: SteeringVector
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs: "start", one "tokens" per decoding step, then "done" with each
    row's text, pieces and per-token projections. Call with the model lock held."""
    hooked, t0 = state.hooked, time.perf_counter()
    tokens = prompt_tokens(hooked, req.prompt, req.chat)
    directions = {i: vector[i] for i in req.layers}
    alphas = [0.0, *req.alphas]  # row 0 is the unsteered baseline
    rows = [Steering(directions, a, positions=req.positions) if a else None for a in alphas]
    yield "start", {"rows": [{"row": r, "alpha": a} for r, a in enumerate(alphas)],
                    "prompt_tokens": len(tokens), "layers": req.layers}
    texts = [RowText(hooked.tokenizer) for _ in rows]
    steps = stream_rows(hooked, tokens, rows, max_tokens=req.max_tokens,
                        temperature=req.temperature, seed=req.seed)
    with contextlib.closing(steps):
        for step in steps:
            yield "tokens", {"tokens": [{"row": r, "id": t, "piece": texts[r].add(t)}
                                        for r, t in step.items()]}
    readout = req.layers[0]
    proj = generated_projections(hooked, tokens, [t.ids for t in texts],
                                 unit_vectors(vector, [readout]))[readout]
    elapsed = time.perf_counter() - t0
    yield "done", {
        "rows": [{"row": r, "alpha": a, "text": hooked.tokenizer.decode(t.ids),
                  "token_ids": t.ids, "pieces": t.pieces, "projections": proj[r]}
                 for r, (a, t) in enumerate(zip(alphas, texts, strict=True))],
        "readout_layer": readout, "seconds": round(elapsed, 3),
        "tokens": sum(len(t.ids) for t in texts)}


@bp.post("/api/generate")
def generate() -> Response:
    state = get_state()
    req, vector = _generation(state)
    with _model(state):
        events = dict(generation_events(state, req, vector))  # keeps "start" and "done"
    return jsonify(**events["done"], prompt_tokens=events["start"]["prompt_tokens"])


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@bp.post("/api/stream")
def stream() -> Response:
    state = get_state()
    req, vector = _generation(state)  # bad input fails here, as a JSON 400, before streaming

    def events() -> Iterator[str]:
        yield ": waiting for the model\n\n"  # sends the headers while queued behind the lock
        try:
            with _model(state):
                gen = generation_events(state, req, vector)
                with contextlib.closing(gen):  # a closed response closes the generation
                    for event, data in gen:
                        yield _sse(event, data)
        except RequestError as exc:
            yield _sse("error", error_body(exc))
        except Exception as exc:  # the headers are gone: report in-band
            log.exception("explorer stream failed")
            yield _sse("error", error_body(RequestError(f"internal error: {exc}", None, 500)))

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@bp.post("/api/sweep")
def sweep() -> Response:
    state = get_state()
    req = parse_sweep(json_object(), state.limits, state.hooked.num_layers, list(state.sweeps))
    vector = state.resolve(req.vector)
    layers = req.layers or vector.layers
    missing = [i for i in layers if i not in vector]
    if missing:
        raise RequestError(f"the vector has no direction at layers {missing}", "layers")
    with _model(state):
        tokens = prompt_tokens(state.hooked, req.prompt, req.chat)
        result = state.sweeps[req.mode](state.hooked, vector, tokens, layers=layers,
                                        alpha=req.alpha, max_tokens=req.max_tokens)
    return jsonify(result)


# -- the vector library --------------------------------------------------------------------------

@bp.get("/api/vectors")
def list_vectors() -> Response:
    state = get_state()
    out = []
    for entry in state.library.list():
        norms = entry.get("norms")
        if isinstance(norms, dict):
            entry["norms"] = [norms[k] for k in sorted(norms)]
        entry["compatible"] = entry.get("hidden_size") == state.hooked.hidden_size
        out.append(entry)
    return jsonify(vectors=out)


@bp.post("/api/vectors")
def save_vector() -> tuple[Response, int]:
    state = get_state()
    req = parse_save(json_object())
    vector = state.resolve(req.vector)
    if req.name in state.library and not req.overwrite:
        raise RequestError(f'a vector named {req.name!r} exists; send "overwrite": true to '
                           "replace it", "name", 409)
    path = state.library.save(req.name, vector)
    return jsonify(name=req.name, file=path.name, **describe_vector(vector)), 201


@bp.get("/api/vectors/<name>")
def load_vector(name: str) -> Response:
    state = get_state()
    vector = state.resolve(VectorRef(name=_name(name)), field="name")
    return jsonify(name=name, metadata=vector.metadata, **describe_vector(vector))


@bp.delete("/api/vectors/<name>")
def delete_vector(name: str) -> Response:
    state = get_state()
    try:
        state.library.delete(_name(name))
    except FileNotFoundError:
        raise RequestError(f"no vector named {name!r} in the library", "name", 404) from None
    return jsonify(deleted=name)
