"""The OpenAI wire format: request bodies (with mlux's `steering` extension) read into a
`GenerationRequest`, and errors as OpenAI error objects.

Fields are read with `mlux.web.Fields`: every problem is a `RequestError` naming the field, which
the app renders as `{"error": {"message", "type", "param", "code"}}`; nothing reaches the model
unchecked. Every field is read or refused: the fields mlux honours (`SAMPLING` and `stop`,
`steering`, the prompt or messages, `model`), OpenAI's optional ones accepted only at the value
that asks for nothing (`AT_DEFAULT`, e.g. `"logprobs": null`), `user` (an end-user id, kept by
nobody); any other field is a 400 naming it, as are unknown fields inside a steering term.
Parsing builds arrays (vectors), so it runs on the engine's thread (`Engine.call`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import web
from ..conditions import Condition
from ..steering import Steering
from ..vectors import SteeringVector
from ..web import Fields, RequestError
from ..web.condition_fields import condition_object, read_condition_settings

__all__ = ["AT_DEFAULT", "ROLES", "APIError", "GenerationRequest", "Limits", "check_model",
           "error_body", "parse_request", "parse_sae_clamp", "parse_steering"]

# OpenAI's optional fields that mlux serve does not implement: accepted only at the value that
# asks for nothing, so that no request is silently answered without what it asked for.
AT_DEFAULT: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "logit_bias": (None, {}), "suffix": (None, ""), "stream_options": (None,),
    "tools": (None, []), "tool_choice": (None, "none"), "response_format": (None,),
}
MAX_STOPS = 4  # as OpenAI
ROLES = ("system", "developer", "user", "assistant")  # chat message roles served

APIError = RequestError  # the name `mlux.serve` has always exported: the one web error type


@dataclass(frozen=True)
class Limits(web.Limits):
    """The shared limits with serving defaults (max_tokens 512, OpenAI's temperature range, room
    for inline vectors in the body) and serve's own."""

    max_tokens: int = 512
    max_temperature: float = 2.0
    max_body_bytes: int = 8 << 20
    max_prompt_tokens: int = 4096
    max_steering_terms: int = 8


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: Optional[int]
    stream: bool
    steering: list[Steering] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # text stops: cut before the first found


def error_body(exc: RequestError) -> dict[str, Any]:
    """An OpenAI error object: `type` follows the status, `param` is the field at fault."""
    kind = ("server_error" if exc.status >= 500 else "not_found_error" if exc.status == 404
            else "invalid_request_error")
    return {"error": {"message": exc.message, "type": kind, "param": exc.field,
                      "code": exc.code}}


def check_model(f: Fields, model_id: str) -> None:
    """`model` may be absent (the one served model) or name it; anything else is a 404
    `model_not_found`, as OpenAI answers (a non-string is a 400)."""
    value = f.get("model")
    if value is None:
        return
    if not isinstance(value, str):
        raise f.fail("model", f"must be a string naming the served model ({model_id!r})")
    if value != model_id:
        raise RequestError(f"The model {value[:100]!r} does not exist; this server serves "
                           f"{model_id!r} (GET /v1/models)", "model", 404, "model_not_found")


def _vector(f: Fields, hidden_size: int, load_vector: Callable[[str], Any]) -> Any:
    """A library vector by name, or an inline list of `hidden_size` finite numbers."""
    raw = f.get("vector", required=True)
    if isinstance(raw, str):
        try:
            vector = load_vector(raw)
        except (ValueError, FileNotFoundError) as e:
            raise f.fail("vector", f"names no usable library vector ({raw!r}: {e})") from e
        if vector.hidden_size != hidden_size:
            raise f.fail("vector", f"{raw!r} has hidden size {vector.hidden_size}, the model "
                                   f"has {hidden_size}")
        return vector
    if not isinstance(raw, list):
        raise f.fail("vector", "must be a library name or a list of numbers")
    values = f.numbers("vector", hidden_size)
    if len(values) != hidden_size:  # type: ignore[arg-type]
        raise f.fail("vector", f"must hold {hidden_size} numbers (the model's hidden size), "
                               f"got {len(values)}")  # type: ignore[arg-type]
    try:  # the library's own checks: finite values whose norm fits float32
        return SteeringVector({0: values}).directions[0]
    except ValueError as exc:
        raise f.fail("vector", str(exc).removeprefix("layer 0: ")) from None


def _condition(f: Fields, *, num_layers: int, hidden_size: int,
               load_vector: Callable[[str], Any]) -> Optional[Condition]:
    """A term's `condition`: `{"vector": NAME | [floats], "layer": int, "threshold": float,
    "comparator": "larger" | "smaller", "summary": "mean" | "last"}` (None when absent)."""
    c = condition_object(f)
    if c is None:
        return None
    vector = _vector(c, hidden_size, load_vector)
    settings = read_condition_settings(c, num_layers)
    c.done()
    return settings.condition(vector, f"{c.prefix}vector")


def _steering_term(f: Fields, *, num_layers: int, hidden_size: int,
                   load_vector: Callable[[str], Any], limits: Limits) -> Steering:
    vector = _vector(f, hidden_size, load_vector)
    named = hasattr(vector, "directions")  # a library vector knows its own layers
    layers = f.layers("layers", num_layers, required=not named)
    if named and layers is not None:
        missing = [i for i in layers if i not in vector.directions]
        if missing:
            raise f.fail("layers", f"name layers the vector has no direction for: {missing}")
    alpha = f.number("alpha", -limits.max_alpha, limits.max_alpha, 1.0)
    positions = f.positions()
    condition = _condition(f, num_layers=num_layers, hidden_size=hidden_size,
                           load_vector=load_vector)
    f.done()
    steering = Steering(vector, alpha, layers, positions, condition=condition)
    try:  # alpha x vector must fit float32 too (the library's own check, on the product)
        SteeringVector({i: v * alpha for i, v in steering.per_layer().items()})
    except ValueError as exc:
        raise f.fail("alpha", f"times the vector overflows float32 ({exc})") from None
    return steering


def parse_steering(
    f: Fields, *, num_layers: int, hidden_size: int, load_vector: Callable[[str], Any],
    limits: Limits,
) -> list[Steering]:
    """The body's `steering`: `{"vector": NAME | [floats], "layers": [int], "alpha": float,
    "positions": ...}` or a list of such objects -> `Steering` terms (none when absent)."""
    raw = f.get("steering")
    if raw is None:
        return []
    if isinstance(raw, dict):  # one object: its fields are "steering.alpha", ...
        terms = [Fields(raw, f"{f.prefix}steering.")]
    else:  # a list: "steering[1].alpha", ...
        terms = f.objects("steering", limits.max_steering_terms)
    return [_steering_term(t, num_layers=num_layers, hidden_size=hidden_size,
                           load_vector=load_vector, limits=limits) for t in terms]


def parse_sae_clamp(f: Fields, sae: Any) -> list[Steering]:
    """The body's `sae_clamp`: `{"feature": int, "value": float, "positions": ...}` -> one
    `Steering(sae_clamp=...)` term on the server's SAE (`mlux serve --sae DIR`)."""
    raw = f.get("sae_clamp")
    if raw is None:
        return []
    if sae is None:
        raise f.fail("sae_clamp", "the server has no SAE (start it with --sae DIR)")
    if not isinstance(raw, dict):
        raise f.fail("sae_clamp", 'must be an object {"feature": int, "value": number}')
    c = Fields(raw, f"{f.prefix}sae_clamp.")
    feature = c.integer("feature", 0, sae.config.d_sae - 1)
    if feature is None:
        raise c.fail("feature", f"is required (0..{sae.config.d_sae - 1})")
    value = c.number("value", -1e6, 1e6)
    positions = c.positions()
    c.done()
    return [Steering(positions=positions, sae_clamp=(sae, feature, value))]


def parse_request(f: Fields, prompt_tokens: list[int], *, limits: Limits, sae: Any = None,
                  **steer: Any) -> GenerationRequest:
    """Read the sampling and steering fields of a (chat) completion body (`f`) whose prompt is
    tokenized; `steer` is the model's `num_layers`, `hidden_size` and `load_vector(name)`."""
    if not prompt_tokens:
        raise RequestError("the prompt is empty", "prompt")
    if len(prompt_tokens) > limits.max_prompt_tokens:
        raise RequestError(f"the prompt has {len(prompt_tokens)} tokens; the limit is "
                           f"{limits.max_prompt_tokens}", "prompt")
    f.integer("n", 1, 1, 1)  # only n=1 is served
    f.text("user", 256, required=False, blank=True)  # an end-user id: nothing to do with it
    for key, allowed in AT_DEFAULT.items():
        value = f.get(key)
        if not any(_same(value, a) for a in allowed):
            raise f.fail(key, f"is not supported by mlux serve (accepted only as "
                              f"{' or '.join(map(_json, allowed))})")
    req = GenerationRequest(
        prompt_tokens=prompt_tokens,
        max_tokens=f.integer("max_tokens", 1, limits.max_tokens, 128),  # type: ignore[arg-type]
        temperature=f.number("temperature", 0.0, limits.max_temperature, 0.0),
        top_p=f.number("top_p", 1e-6, 1.0, 1.0),
        seed=f.integer("seed", 0, 2**31 - 1),
        stream=f.boolean("stream", False),
        steering=parse_steering(f, limits=limits, **steer) + parse_sae_clamp(f, sae),
        stop=_stops(f),
    )
    f.done()
    return req


def _same(value: Any, default: Any) -> bool:
    """Equal as JSON values: 0 == 0.0, but 0 is not false (`logprobs: 0` asks for something)."""
    return value == default and isinstance(value, bool) == isinstance(default, bool) and (
        type(value) is type(default) or not isinstance(default, (str, dict, list)))


def _json(value: Any) -> str:
    return "null" if value is None else "false" if value is False else repr(value)


def _stops(f: Fields) -> list[str]:
    """`stop`: a string or a list of at most MAX_STOPS non-empty strings (absent: none)."""
    value = f.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in value)):
        raise f.fail("stop", f"must be a string or a list of at most {MAX_STOPS} strings, each "
                             "of 1 to 256 characters")
    return list(value)
