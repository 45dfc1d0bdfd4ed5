"""The explorer blueprint: the page, the model info, vectors from contrast prompts, generation
(JSON and server-sent events) and the layer sweep; the library's routes are `library_api.py`.

Every model call runs on the app's one model thread (`ExplorerState.run` / `.stream`: request
threads parse, queue the work and wait; they never run MLX) and every hook is installed by a
context manager or a generator whose `finally` removes it, so hooks never outlive a request; a
streamed response that is closed early (the client went away) stops the generation with it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Any, Iterator, Optional

from flask import Blueprint, Response, jsonify, render_template

from mlux.detokenize import RowText
from mlux.evaluation import perplexity
from mlux.explorer.conditions import condition_report, explorer_condition
from mlux.explorer.engine import (
    generated_projections,
    last_token_norms,
    prompt_tokens,
    stream_rows,
    unit_vectors,
)
from mlux.explorer.state import ExplorerState, get_state, with_warnings
from mlux.explorer.validation import (
    ComputeRequest,
    GenerateRequest,
    SweepRequest,
    VectorRef,
    parse_compute,
    parse_generate,
    parse_sweep,
)
from mlux.extract import extract_steering_vectors
from mlux.model import HookedModel
from mlux.steering import Steering
from mlux.vectors import SteeringVector
from mlux.web import RequestError, json_object, to_json

__all__ = ["bp", "describe_vector", "error_body", "generation_events", "row_scores"]

bp = Blueprint("explorer", __name__)
log = logging.getLogger("mlux.explorer")


def error_body(exc: RequestError) -> dict[str, Any]:
    """The explorer's error shape: `{"error": message, "field": the field at fault or null}`."""
    return {"error": exc.message, "field": exc.field}


def describe_vector(vector: SteeringVector) -> dict[str, Any]:
    """A vector for the page (run on the model's thread: norms are computed). With the
    contrast prompts it came from, how many of each were used."""
    norms = vector.norms
    meta = vector.metadata if isinstance(vector.metadata, dict) else {}
    used = {f"num_{side}": len(meta[side]) for side in ("positive", "negative")
            if isinstance(meta.get(side), list)}
    return {"layers": vector.layers, "norms": [norms[i] for i in vector.layers],
            "hidden_size": vector.hidden_size, "method": vector.method,
            "num_pairs": vector.num_pairs, **used, "model_id": vector.model_id,
            "created": vector.created}


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
    _check_chat(state, req.chat)
    result, warns = state.run(lambda: with_warnings(lambda: _compute(state, req)))
    return jsonify(**result, warnings=warns)


def _compute(state: ExplorerState, req: ComputeRequest) -> dict[str, Any]:
    """On the model's thread: the vector of the contrast prompts, remembered under an id."""
    hooked, cap = state.hooked, state.limits.max_compute_tokens
    total = sum(len(prompt_tokens(hooked, p, req.chat)) for p in req.positive + req.negative)
    if total > cap:  # extraction time grows with the tokens: no request holds the model long
        raise RequestError(f"the prompts hold {total} tokens in all; one request may hold at "
                           f"most {cap}, so that no request holds the model for more than a few "
                           "seconds: send fewer or shorter prompts", "positive", 413)
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
    return {"id": state.remember(vector), **describe_vector(vector), "prompt_tokens": total}


def _check_chat(state: ExplorerState, chat: bool) -> None:
    if chat and getattr(state.hooked.tokenizer, "chat_template", None) is None:
        raise RequestError("this model's tokenizer has no chat template", "chat")


# -- generation ----------------------------------------------------------------------------------

def _generation(state: ExplorerState) -> GenerateRequest:
    req = parse_generate(json_object(), state.limits, state.hooked.num_layers)
    _check_chat(state, req.chat)
    return req


def _steering_vector(state: ExplorerState, ref: VectorRef, layers: Optional[list[int]],
                     unit: str) -> SteeringVector:
    """On the model's thread: the referenced vector, with a direction at every layer asked
    (None: its own layers)."""
    vector = state.resolve(ref)
    layers = vector.layers if layers is None else layers
    missing = [i for i in layers if i not in vector]
    if missing:
        raise RequestError(f"the vector has no direction at layers {missing}; it has "
                           f"{vector.layers}", "layers")
    _check_relative(vector, layers, unit)
    return vector


def _check_relative(vector: SteeringVector, layers: list[int], unit: str) -> None:
    norms = vector.norms if unit == "residual" else {}
    zero = [i for i in layers if norms.get(i) == 0]
    if zero:
        raise RequestError(f"the vector is zero at layers {zero}, so an alpha relative to the "
                           "residual norm has no direction to scale", "alpha_unit")


def _generation_vector(state: ExplorerState, req: GenerateRequest) -> SteeringVector:
    """On the model's thread: the vector a generation steers with; a bad vector or condition is
    a 400 before any work."""
    vector = _steering_vector(state, req.vector, req.layers, req.alpha_unit)
    explorer_condition(state, req)
    return vector


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
    row's text, pieces, per-token projections and scores. Run on the model's thread. Sampling
    (temperature > 0) without a seed draws a fresh one, reported so the run can be repeated."""
    hooked, t0 = state.hooked, time.perf_counter()
    seed = req.seed if req.seed is not None or req.temperature == 0 else (
        secrets.randbelow(2**31))
    tokens, warns = with_warnings(lambda: prompt_tokens(hooked, req.prompt, req.chat))
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
    yield "start", {"rows": described, "prompt_tokens": len(tokens), "seed": seed,
                    "warnings": warns, **steering}
    texts = [RowText(hooked.tokenizer) for _ in rows]
    steps = stream_rows(hooked, tokens, rows, max_tokens=req.max_tokens,
                        temperature=req.temperature, seed=seed)
    with contextlib.closing(steps):
        for step in steps:
            yield "tokens", {"tokens": [{"row": r, "id": t, "piece": texts[r].add(t)}
                                        for r, t in step.items()]}
    readout = req.layers[0]
    proj = generated_projections(hooked, tokens, [t.ids for t in texts],
                                 unit_vectors(vector, [readout]))[readout]
    elapsed = time.perf_counter() - t0
    yield "done", {
        "rows": [{**d, "text": text, "token_ids": t.ids, "pieces": t.pieces,
                  "projections": proj[r], "scores": row_scores(state, tokens, t.ids, text)}
                 for r, (d, t) in enumerate(zip(described, texts, strict=True))
                 for text in [hooked.tokenizer.decode(t.ids)]],
        "readout_layer": readout, "seconds": round(elapsed, 3), "seed": seed,
        "tokens": sum(len(t.ids) for t in texts), **steering}


def row_scores(state: ExplorerState, prompt: list[int], ids: list[int], text: str
               ) -> dict[str, Any]:
    """One row's scores, so degenerate text is flagged: its perplexity under the unsteered
    model (`mlux.evaluation.perplexity`) and each behaviour scorer's verdict (True, False or
    None when the scorer cannot tell)."""
    scores: dict[str, Any] = {"perplexity": perplexity(state.hooked, prompt, ids)}
    scores.update({label: scorer(text) for label, scorer in state.scorers.items()})
    return scores


@bp.post("/api/generate")
def generate() -> Response:
    state = get_state()
    req = _generation(state)

    def run() -> dict[str, Any]:
        vector = _generation_vector(state, req)
        return dict(generation_events(state, req, vector))  # keeps "start" and "done"

    events = state.run(run)
    start = events["start"]
    return jsonify(**events["done"], prompt_tokens=start["prompt_tokens"],
                   warnings=start["warnings"])


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {to_json(data)}\n\n"


@bp.post("/api/stream")
def stream() -> Response:
    state = get_state()
    req = _generation(state)  # bad input fails here, as a JSON 400, before streaming
    vector = state.run(lambda: _generation_vector(state, req))

    def events() -> Iterator[str]:
        yield ": waiting for the model\n\n"  # sends the headers while queued behind others
        try:
            items = state.stream(lambda: generation_events(state, req, vector))
            with contextlib.closing(items):  # a closed response stops the generation
                for event, data in items:
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
    _check_chat(state, req.chat)
    result, warns = state.run(lambda: with_warnings(lambda: _sweep(state, req)))
    return jsonify({**result, "alpha_unit": req.alpha_unit, "warnings": warns})


def _sweep(state: ExplorerState, req: SweepRequest) -> dict[str, Any]:
    """On the model's thread: the sweep mode's result, alphas relative to the residual norm
    turned into raw ones per layer (and the rows say which alpha was applied)."""
    vector = _steering_vector(state, req.vector, req.layers, req.alpha_unit)
    layers = req.layers or vector.layers
    hooked = state.hooked
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
    return result
