"""Request schemas for the explorer's JSON API: every field checked for type, range and size.

A bad request raises `ValidationError`, which the blueprint turns into a JSON error naming the
field (`{"error": ..., "field": ...}`); unknown fields are rejected too, so typos don't pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mlux.vector_library import validate_name

__all__ = [
    "ComputeRequest", "GenerateRequest", "Limits", "SaveRequest", "SweepRequest",
    "ValidationError", "VectorRef", "json_body", "parse_compute", "parse_generate", "parse_save",
    "parse_sweep",
]

METHODS = ("mean_diff", "pca")
POSITIONS = ("all", "generated", "prompt")


class ValidationError(Exception):
    """A request field is missing or wrong; `status` is the HTTP code to answer with."""

    def __init__(self, field: Optional[str], message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class Limits:
    """Sizes a request may ask for; generous for a local tool, finite so no request can pin
    the model (and the lock) for long."""

    max_prompt_chars: int = 4000
    max_prompts: int = 64
    max_tokens: int = 256
    max_sweep_tokens: int = 64
    max_alphas: int = 8
    max_alpha: float = 1000.0
    max_temperature: float = 5.0
    max_body_bytes: int = 1 << 20

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VectorRef:
    """A vector computed in this session (`id`) or stored in the library (`name`)."""

    id: Optional[str] = None
    name: Optional[str] = None


@dataclass(frozen=True)
class ComputeRequest:
    positive: list[str]
    negative: list[str]
    method: str
    chat: bool


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    vector: VectorRef
    layers: list[int]
    alphas: list[float]  # steered rows; row 0 (the baseline) is always added
    max_tokens: int
    temperature: float
    seed: Optional[int]
    positions: str
    chat: bool


@dataclass(frozen=True)
class SaveRequest:
    name: str
    vector: VectorRef
    overwrite: bool


@dataclass(frozen=True)
class SweepRequest:
    prompt: str
    vector: VectorRef
    layers: Optional[list[int]]
    alpha: float
    max_tokens: int
    mode: str
    chat: bool


def json_body(content_type: Optional[str], data: bytes) -> dict[str, Any]:
    """The request's JSON object: 415 unless sent as application/json, 400 unless it parses."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise ValidationError(None, "send the request body as JSON with Content-Type: "
                                    "application/json", status=415)
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(None, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError(None, "the request body must be a JSON object")
    return body


class _Fields:
    """Reads fields off a JSON object, remembering which were read to reject the rest."""

    def __init__(self, body: dict[str, Any], prefix: str = "") -> None:
        self.body, self.prefix, self.seen = body, prefix, set()

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.body or self.body[key] is None:
            if required:
                raise ValidationError(self.prefix + key, f"{self.prefix + key} is required")
            return None
        return self.body[key]

    def fail(self, key: str, message: str) -> ValidationError:
        return ValidationError(self.prefix + key, f"{self.prefix + key} {message}")

    def text(self, key: str, max_chars: int, *, required: bool = True) -> Optional[str]:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        if len(value) > max_chars:
            raise self.fail(key, f"is too long ({len(value)} characters; at most {max_chars})")
        return value

    def _list(self, key: str, required: bool, what: str, max_items: int) -> Optional[list]:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list of {what}")
        if len(value) > max_items:
            raise self.fail(key, f"has {len(value)} {what}; at most {max_items}")
        return value

    def texts(self, key: str, max_items: int, max_chars: int) -> list[str]:
        value: list = self._list(key, True, "strings", max_items)  # type: ignore[assignment]
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(key, f"[{i}] must be a non-empty string")
            if len(item) > max_chars:
                raise self.fail(key, f"[{i}] is too long ({len(item)} characters; at most "
                                     f"{max_chars})")
        return list(value)

    def integer(self, key: str, lo: int, hi: int, default: Optional[int]) -> Optional[int]:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def number(self, key: str, lo: float, hi: float, default: Optional[float]) -> float:
        value = self._get(key, default is None)
        if value is None:
            return float(default)  # type: ignore[arg-type]
        return self._check_number(key, value, lo, hi)

    def _check_number(self, key: str, value: Any, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "must be a number")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo:g} and {hi:g}, got {value}")
        return float(value)

    def numbers(self, key: str, max_items: int, lo: float, hi: float) -> Optional[list[float]]:
        value = self._list(key, False, "numbers", max_items)
        if value is None:
            return None
        return [self._check_number(f"{key}[{i}]", v, lo, hi) for i, v in enumerate(value)]

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self._get(key, False)
        if value is None:
            return default
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def layers(self, key: str, num_layers: int, *, required: bool) -> Optional[list[int]]:
        value = self._list(key, required, "layer indices", num_layers)
        if value is None:
            return None
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_layers:
                raise self.fail(key, f"entries must be integers in 0..{num_layers - 1}; got {v!r}")
        if len(set(value)) != len(value):
            raise self.fail(key, "must not repeat a layer")
        return list(value)

    def vector(self, key: str = "vector") -> VectorRef:
        value = self._get(key, True)
        if not isinstance(value, dict):
            raise self.fail(key, 'must be {"id": ...} (a computed vector) or {"name": ...} '
                                 "(a library vector)")
        inner = _Fields(value, prefix=f"{self.prefix}{key}.")
        if ("id" in value) == ("name" in value):
            raise self.fail(key, 'must have exactly one of "id" and "name"')
        ref_id = inner.text("id", 64, required=False)
        name = inner.text("name", 64, required=False)
        inner.done()
        if name is not None:
            try:
                validate_name(name)
            except ValueError as exc:
                raise inner.fail("name", f"is invalid: {exc}") from None
        return VectorRef(id=ref_id, name=name)

    def done(self) -> None:
        unknown = sorted(set(self.body) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "is not a known field")


def parse_compute(body: dict[str, Any], limits: Limits) -> ComputeRequest:
    f = _Fields(body)
    pos = f.texts("positive", limits.max_prompts, limits.max_prompt_chars)
    neg = f.texts("negative", limits.max_prompts, limits.max_prompt_chars)
    req = ComputeRequest(pos, neg, f.choice("method", METHODS, "mean_diff"),
                         f.boolean("chat", False))
    f.done()
    if req.method == "pca" and (len(pos) != len(neg) or len(pos) < 2):
        raise ValidationError("negative", "method 'pca' needs as many negative prompts as "
                                          "positive ones, at least 2 pairs")
    return req


def parse_generate(body: dict[str, Any], limits: Limits, num_layers: int) -> GenerateRequest:
    f = _Fields(body)
    prompt = f.text("prompt", limits.max_prompt_chars)
    vector = f.vector()
    layers = f.layers("layers", num_layers, required=True)
    alpha_given = body.get("alpha") is not None
    alphas = f.numbers("alphas", limits.max_alphas, -limits.max_alpha, limits.max_alpha)
    alpha = f.number("alpha", -limits.max_alpha, limits.max_alpha, 0.0)
    if alphas is not None and alpha_given:
        raise ValidationError("alphas", "give either alpha (one steered row) or alphas "
                                        "(compare mode), not both")
    req = GenerateRequest(
        prompt=prompt, vector=vector, layers=layers,  # type: ignore[arg-type]
        alphas=alphas if alphas is not None else [alpha],
        max_tokens=f.integer("max_tokens", 1, limits.max_tokens, 48),  # type: ignore[arg-type]
        temperature=f.number("temperature", 0.0, limits.max_temperature, 0.0),
        seed=f.integer("seed", 0, 2**31 - 1, None),
        positions=f.choice("positions", POSITIONS, "all"),
        chat=f.boolean("chat", False),
    )
    f.done()
    return req


def parse_save(body: dict[str, Any]) -> SaveRequest:
    f = _Fields(body)
    name = f.text("name", 64)
    try:
        validate_name(name)
    except ValueError as exc:
        raise ValidationError("name", str(exc)) from None
    req = SaveRequest(name, f.vector(), f.boolean("overwrite", False))  # type: ignore[arg-type]
    f.done()
    return req


def parse_sweep(body: dict[str, Any], limits: Limits, num_layers: int,
                modes: Sequence[str]) -> SweepRequest:
    f = _Fields(body)
    req = SweepRequest(
        prompt=f.text("prompt", limits.max_prompt_chars),  # type: ignore[arg-type]
        vector=f.vector(),
        layers=f.layers("layers", num_layers, required=False),
        alpha=f.number("alpha", -limits.max_alpha, limits.max_alpha, None),
        max_tokens=f.integer("max_tokens", 1, limits.max_sweep_tokens, 16),  # type: ignore[arg-type]
        mode=f.choice("mode", modes, modes[0]),
        chat=f.boolean("chat", False),
    )
    f.done()
    return req
