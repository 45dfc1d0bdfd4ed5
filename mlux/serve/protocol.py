"""Parse and validate OpenAI-style request bodies, including mlux's `steering` extension.

Every problem becomes an `APIError` naming the offending field, returned as an OpenAI-style
error object with status 400; nothing reaches the model unchecked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import mlx.core as mx

from ..steering import Steering

__all__ = ["APIError", "GenerationRequest", "Limits", "parse_request", "parse_steering"]

POSITIONS = ("all", "prompt", "generated")


class APIError(ValueError):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    max_prompt_tokens: int = 4096
    max_steering_terms: int = 8
    max_alpha: float = 1000.0


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: Optional[int]
    stream: bool
    steering: list[Steering] = field(default_factory=list)


def _number(body: dict, key: str, default: float, lo: float, hi: float,
            prefix: str = "") -> float:
    value, param = body.get(key, default), prefix + key
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(f"'{key}' must be a finite number", param)
    if not lo <= value <= hi:
        raise APIError(f"'{key}' must be between {lo} and {hi}, got {value}", param)
    return float(value)


def _int(body: dict, key: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"'{key}' must be an integer", key)
    if not lo <= value <= hi:
        raise APIError(f"'{key}' must be between {lo} and {hi}, got {value}", key)
    return value


def parse_steering(
    raw: Any, *, num_layers: int, hidden_size: int, load_vector: Callable[[str], Any],
    limits: Limits,
) -> list[Steering]:
    """`{"vector": NAME | [floats], "layers": [int], "alpha": float, "positions": ...}` or a
    list of such objects -> `Steering` terms."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) > limits.max_steering_terms:
        raise APIError(f"'steering' must hold 1 to {limits.max_steering_terms} objects",
                       "steering")
    terms = []
    for k, item in enumerate(items):
        where = "steering" if not isinstance(raw, list) else f"steering[{k}]"
        if not isinstance(item, dict):
            raise APIError(f"'{where}' must be an object", where)
        unknown = set(item) - {"vector", "layers", "alpha", "positions"}
        if unknown:
            raise APIError(f"unknown field(s) {sorted(unknown)} in '{where}'; valid: vector, "
                           "layers, alpha, positions", where)
        vector = item.get("vector")
        if isinstance(vector, str):
            try:
                vector = load_vector(vector)
            except (ValueError, FileNotFoundError) as e:
                raise APIError(f"unknown vector {item['vector']!r}: {e}", f"{where}.vector") \
                    from e
            if vector.hidden_size != hidden_size:
                raise APIError(f"vector {item['vector']!r} has hidden size {vector.hidden_size}"
                               f", the model has {hidden_size}", f"{where}.vector")
        elif isinstance(vector, list):
            if len(vector) != hidden_size or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in vector):
                raise APIError(f"inline vector must be {hidden_size} finite numbers",
                               f"{where}.vector")
            vector = mx.array(vector, dtype=mx.float32)
        else:
            raise APIError("'vector' must be a library name or a list of floats",
                           f"{where}.vector")
        layers = item.get("layers")
        if layers is not None:
            if (not isinstance(layers, list) or not layers
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
                raise APIError("'layers' must be a non-empty list of ints", f"{where}.layers")
            bad = [i for i in layers if not 0 <= i < num_layers]
            if bad:
                raise APIError(f"layers {bad} out of range: valid 0..{num_layers - 1}",
                               f"{where}.layers")
            if hasattr(vector, "directions") and any(i not in vector.directions for i in layers):
                raise APIError(f"vector has no direction for layers "
                               f"{[i for i in layers if i not in vector.directions]}",
                               f"{where}.layers")
        elif not hasattr(vector, "directions"):
            raise APIError("an inline vector needs 'layers'", f"{where}.layers")
        alpha = _number(item, "alpha", 1.0, -limits.max_alpha, limits.max_alpha, f"{where}.")
        positions = item.get("positions", "all")
        if positions not in POSITIONS:
            raise APIError(f"'positions' must be one of {', '.join(POSITIONS)}",
                           f"{where}.positions")
        terms.append(Steering(vector, alpha, layers, positions))
    return terms


def parse_request(body: Any, prompt_tokens: list[int], *, limits: Limits, **steer: Any
                  ) -> GenerationRequest:
    """Validate the sampling fields of a (chat) completion body whose prompt is tokenized."""
    if not prompt_tokens:
        raise APIError("the prompt is empty", "prompt")
    if len(prompt_tokens) > limits.max_prompt_tokens:
        raise APIError(f"the prompt has {len(prompt_tokens)} tokens; the limit is "
                       f"{limits.max_prompt_tokens}", "prompt")
    n = _int(body, "n", 1, 1, 1)
    del n  # only n=1 is served
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError("'stream' must be a boolean", "stream")
    return GenerationRequest(
        prompt_tokens=prompt_tokens,
        max_tokens=_int(body, "max_tokens", 128, 1, limits.max_tokens),
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=_int(body, "seed", None, 0, 2**31 - 1),
        stream=stream,
        steering=parse_steering(body.get("steering"), limits=limits, **steer),
    )
