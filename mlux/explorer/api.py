"""The explorer blueprint: the page, the model info, vectors from contrast prompts, generation
(JSON and server-sent events) and the layer sweep; the library's routes are `library_api.py`.

Every model call runs under the app's lock and every hook is installed by a context manager
or a generator whose `finally` removes it, so hooks never outlive a request; a streamed
response that is closed early (the client went away) closes the generation with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Optional

from flask import Blueprint, Response, jsonify, render_template

from mlux.detokenize import RowText
from mlux.explorer.conditions import condition_report, explorer_condition
from mlux.explorer.engine import (
    generated_projections,
    last_token_norms,
    prompt_tokens,
    stream_rows,
    unit_vectors,
)
from mlux.explorer.state import ExplorerState, get_state
from mlux.explorer.validation import GenerateRequest, parse_compute, parse_generate, parse_sweep
from mlux.extract import extract_steering_vectors
from mlux.model import HookedModel
from mlux.steering import Steering
from mlux.vectors import SteeringVector
from mlux.web import RequestError, json_object, to_json

__all__ = ["bp", "describe_vector", "error_body", "generation_events"]

bp = Blueprint("explorer", __name__)
log = logging.getLogger("mlux.explorer")


def error_body(exc: RequestError) -> dict[str, Any]:
    """The explorer's error shape: `{"error": message, "field": the field at fault or null}`."""
    return {"error": exc.message, "field": exc.field}


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
    with _model(state):  # a ValueError here (e.g. activations that overflow) is a 400
        directions = extract_steering_vectors(hooked, req.positive, req.negative, "all",
                                              method=req.method, chat=req.chat)
        vector = SteeringVector(directions, model_id=hooked.model_id, method=req.method,
                                num_pairs=min(len(req.positive), len(req.negative)),
                                metadata={"positive": req.positive, "negative": req.negative,
                                          "chat": req.chat, "source": "mlux explorer"})
    if max(vector.norms.values()) < 1e-6:
        raise RequestError("the positive and negative prompts give the same activations at every "
                           "layer, so the vector is zero: they probably encode to the same tokens "
                           "(e.g. characters the model's vocabulary lacks); use prompts that "
                           "differ in words the model knows", "positive")
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
    _check_relative(vector, req.layers, req.alpha_unit)
    explorer_condition(state, req)  # a bad condition is a 400 before any work
    return req, vector


def _check_relative(vector: SteeringVector, layers: list[int], unit: str) -> None:
    norms = vector.norms if unit == "residual" else {}
    zero = [i for i in layers if norms.get(i) == 0]
    if zero:
        raise RequestError(f"the vector is zero at layers {zero}, so an alpha relative to the "
                           "residual norm has no direction to scale", "alpha_unit")


def alpha_scales(hooked: HookedModel, vector: SteeringVector, tokens: list[int],
                 layers: list[int], unit: str) -> tuple[dict[int, float], Optional[list[float]]]:
    """Per layer, what alpha multiplies the vector's direction by: 1 for raw alphas; for
    alphas relative to the residual norm (at the prompt's last token), that norm over the
    vector's, so alpha 0.5 adds half the residual's length. Also the residual norms (or None)."""
    if unit == "raw":
        return {i: 1.0 for i in layers}, None
    residual, norms = last_token_norms(hooked, tokens, layers), vector.norms
    return {i: residual[i] / norms[i] for i in layers}, [residual[i] for i in layers]


def generation_events(state: ExplorerState, req: GenerateRequest, vector: SteeringVector
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs: "start", one "tokens" per decoding step, then "done" with each
    row's text, pieces and per-token projections. Call with the model lock held."""
    hooked, t0 = state.hooked, time.perf_counter()
    tokens = prompt_tokens(hooked, req.prompt, req.chat)
    scales, residual = alpha_scales(hooked, vector, tokens, req.layers, req.alpha_unit)
    directions = {i: vector[i] * scales[i] for i in req.layers}
    alphas = [0.0, *req.alphas]  # row 0 is the unsteered baseline
    cond = explorer_condition(state, req)
    rows = [Steering(directions, a, positions=req.positions, condition=cond) if a else None
            for a in alphas]
    steering = {"layers": req.layers, "alpha_unit": req.alpha_unit, "residual_norms": residual,
                "condition": None if cond is None else condition_report(hooked, cond, tokens)}
    described = [{"row": r, "alpha": a, "effective_alphas": [a * scales[i] for i in req.layers]}
                 for r, a in enumerate(alphas)]
    yield "start", {"rows": described, "prompt_tokens": len(tokens), **steering}
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
        "rows": [{**d, "text": hooked.tokenizer.decode(t.ids), "token_ids": t.ids,
                  "pieces": t.pieces, "projections": proj[r]}
                 for r, (d, t) in enumerate(zip(described, texts, strict=True))],
        "readout_layer": readout, "seconds": round(elapsed, 3),
        "tokens": sum(len(t.ids) for t in texts), **steering}


@bp.post("/api/generate")
def generate() -> Response:
    state = get_state()
    req, vector = _generation(state)
    with _model(state):
        events = dict(generation_events(state, req, vector))  # keeps "start" and "done"
    return jsonify(**events["done"], prompt_tokens=events["start"]["prompt_tokens"])


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {to_json(data)}\n\n"


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
    _check_relative(vector, layers, req.alpha_unit)
    hooked = state.hooked
    with _model(state):
        tokens = prompt_tokens(hooked, req.prompt, req.chat)
        scales, _ = alpha_scales(hooked, vector, tokens, layers, req.alpha_unit)
        swept = vector if req.alpha_unit == "raw" else SteeringVector(
            {i: vector[i] * scales[i] for i in layers}, model_id=vector.model_id)
        result = state.sweeps[req.mode](hooked, swept, tokens, layers=layers, alpha=req.alpha,
                                        max_tokens=req.max_tokens)
    if req.alpha_unit != "raw":  # the rows name the vector's own norm and the alpha applied
        for row in result.get("layers", []):
            if isinstance(row, dict) and row.get("layer") in scales:
                row.update(norm=vector.norms[row["layer"]],
                           effective_alpha=req.alpha * scales[row["layer"]])
    return jsonify({**result, "alpha_unit": req.alpha_unit})
