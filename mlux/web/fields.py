"""Reading a request: the body as a JSON object, then its fields by type, every failure a
`RequestError` (the one error type of both servers) that names the field at fault."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from flask import current_app, request

from mlux.layers import expand_layer_specs
from mlux.positions import resolve_positions

__all__ = ["MAX_DEPTH", "POSITIONS", "Fields", "Limits", "RequestError", "json_object"]

POSITIONS = ("all", "prompt", "generated")  # what a request may name; resolve_positions decides
MAX_DEPTH = 32  # JSON nesting levels a body may have
_SURROGATE = re.compile("[\ud800-\udfff]")
_RANGE = re.compile(r"-?\d+\s*-\s*-?\d+")  # "1-3": shorthand for the grammar's residuals_1-3


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP code, `field` the body field at fault
    ("steering[1].alpha") or None when no one field is; `code` a machine-readable reason
    ("model_not_found") where the API defines one."""

    def __init__(self, message: str, field: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message, self.field, self.status, self.code = message, field, status, code


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: generous for a local tool, finite so that no request pins
    the model for long. Each server subclasses it with its own fields and defaults."""

    max_tokens: int = 256
    max_alpha: float = 1000.0
    max_temperature: float = 5.0
    max_body_bytes: int = 1 << 20

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _check_tree(body: dict[str, Any]) -> None:
    """At most MAX_DEPTH levels, and only text UTF-8 can encode (a lone surrogate would fail
    later, deep inside a tokenizer): the error names a field at fault."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(f"{path} is nested too deeply (at most {MAX_DEPTH} levels)", path)
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str) and _SURROGATE.search(key):
                raise RequestError("a field name is not valid Unicode (a lone surrogate)",
                                   path or None)
            if isinstance(value, str):
                if _SURROGATE.search(value):
                    name = _join(path, key)
                    raise RequestError(f"{name} is not valid Unicode text (it holds a lone "
                                       "surrogate)", name)
            elif isinstance(value, (dict, list)):
                stack.append((value, _join(path, key), depth + 1))


def _body() -> bytes:
    """The raw body; a chunked one (no Content-Length) is read up to the app's cap and past
    it refused with 413, never cut short (werkzeug would stop reading at the cap)."""
    cap = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None or cap is None:
        return request.get_data(cache=False)
    stream, parts, size = request.environ["wsgi.input"], [], 0
    while size <= cap:
        part = stream.read(min(1 << 16, cap + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    raise RequestError(f"the request body is over the {cap}-byte limit", status=413)


def json_object() -> dict[str, Any]:
    """The current request's body as a JSON object: 415 unless sent as application/json, 413
    past the app's body cap (before reading it), 400 unless it is UTF-8 JSON for an object at
    most MAX_DEPTH levels deep with no lone surrogate. NaN and Infinity parse; the typed reads
    refuse them, naming the field."""
    if request.mimetype != "application/json":
        raise RequestError("send the request body as a JSON object with Content-Type: "
                           "application/json", status=415)
    try:
        body = json.loads(_body().decode("utf-8"))
    except RecursionError:
        raise RequestError(f"the request body is nested too deeply (at most {MAX_DEPTH} "
                           "levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _check_tree(body)
    return body


class Fields:
    """Typed reads of one JSON object's fields. Errors name the field (`prefix` + key) and each
    read marks its field as known, so `done()` can refuse the rest: a typo is an error, not a
    silently ignored option. A missing field and `null` are the same: absent."""

    def __init__(self, body: dict[str, Any], prefix: str = "") -> None:
        self.body, self.prefix, self.seen = body, prefix, set()

    def fail(self, key: str, message: str, status: int = 400) -> RequestError:
        name = self.prefix + key
        return RequestError(f"{name} {message}", name, status)

    def get(self, key: str, required: bool = False) -> Any:
        self.seen.add(key)
        value = self.body.get(key)
        if value is None and required:
            raise self.fail(key, "is required")
        return value

    def _string(self, key: str, value: Any, max_chars: Optional[int], blank: bool) -> str:
        if not isinstance(value, str) or not (blank or value.strip()):
            raise self.fail(key, "must be a string" if blank else "must be a non-empty string")
        if max_chars is not None and len(value) > max_chars:
            raise self.fail(key, f"is too long ({len(value)} characters; at most {max_chars})")
        return value

    def text(self, key: str, max_chars: Optional[int] = None, *, required: bool = True,
             blank: bool = False) -> Optional[str]:
        """A string with a non-space character (any string, "" too, with `blank=True`)."""
        value = self.get(key, required)
        return None if value is None else self._string(key, value, max_chars, blank)

    def items(self, key: str, what: str, max_items: Optional[int] = None, *,
              required: bool = True) -> Optional[list[Any]]:
        """A non-empty list of at most `max_items` items, the items unchecked."""
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list of {what}")
        if max_items is not None and len(value) > max_items:
            raise self.fail(key, f"has {len(value)} {what}; at most {max_items}")
        return value

    def texts(self, key: str, max_items: int, max_chars: int) -> list[str]:
        value: list[Any] = self.items(key, "strings", max_items)  # type: ignore[assignment]
        return [self._string(f"{key}[{i}]", v, max_chars, False) for i, v in enumerate(value)]

    def objects(self, key: str, max_items: Optional[int] = None) -> list[Fields]:
        """A non-empty list of objects, each read by its own `Fields` ("messages[2].role")."""
        value: list[Any] = self.items(key, "objects", max_items)  # type: ignore[assignment]
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", "must be an object")
        return [Fields(item, f"{self.prefix}{key}[{i}].") for i, item in enumerate(value)]

    def integer(self, key: str, lo: int, hi: int, default: Optional[int] = None
                ) -> Optional[int]:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer")
        if not lo <= value <= hi:  # int comparisons are exact, however many digits
            raise self.fail(key, f"must be between {lo} and {hi}, got {_show(value)}")
        return value

    def _number(self, key: str, value: Any, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "must be a number")
        try:
            number = float(value)
        except OverflowError:  # an int past float range
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(key, f"must be a finite number, got {_show(value)}")
        if not lo <= number <= hi:
            raise self.fail(key, f"must be between {lo:g} and {hi:g}, got {_show(value)}")
        return number

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf,
               default: Optional[float] = None) -> float:
        """A finite number in [lo, hi]; required when there is no `default`."""
        value = self.get(key, default is None)
        return float(default) if value is None else self._number(key, value, lo, hi)  # type: ignore[arg-type]

    def numbers(self, key: str, max_items: Optional[int] = None, lo: float = -math.inf,
                hi: float = math.inf, *, required: bool = False) -> Optional[list[float]]:
        value = self.items(key, "numbers", max_items, required=required)
        if value is None:
            return None
        return [self._number(f"{key}[{i}]", v, lo, hi) for i, v in enumerate(value)]

    def layers(self, key: str, num_layers: int, *, required: bool) -> Optional[list[int]]:
        """Distinct residual layers in the one layer grammar (`mlux.layers`): a list of ints
        and specs, or one string of them ("2, 4", "1-3", "-1", "residuals_2-4", "all")."""
        value = self.get(key, required)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or len(items) > num_layers:
            raise self.fail(key, f"must be layer indices (at most {num_layers}) or a layer spec "
                                 "such as \"1-3, -1\"")
        layers: list[int] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise self.fail(key, f"entries must be integers in 0..{num_layers - 1} or layer "
                                     f"specs; got {_show(item)}")
            parts = item.split(",") if isinstance(item, str) else [item]
            for part in parts:
                spec = part.strip() if isinstance(part, str) else part
                if isinstance(spec, str) and _RANGE.fullmatch(spec):
                    spec = "residuals_" + re.sub(r"\s+", "", spec)  # the grammar's range
                try:
                    names = expand_layer_specs(spec, num_layers)
                except ValueError as exc:
                    raise self.fail(key, f"is not a layer spec: {exc}") from None
                if any(not n.startswith("residuals_") for n in names):
                    raise self.fail(key, f"names {_show(spec)}: steering takes residual layers "
                                         "(an index, a range such as 1-3, or residuals_i)")
                layers.extend(int(n.split("_")[1]) for n in names)
        if len(set(layers)) != len(layers):
            raise self.fail(key, "must not repeat a layer")
        return layers

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {_show(value)}")
        return value

    def positions(self, key: str = "positions") -> str:
        """Where to steer, checked by the steering code's own `resolve_positions`; "all" if
        absent. A request names a window ("all", "prompt", "generated"), never numbers."""
        value = self.get(key)
        if value is None:
            return "all"
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            resolve_positions(value, prompt_length=1)
        except ValueError:
            raise self.fail(key, f"must be one of {', '.join(POSITIONS)}; got "
                                 f"{_show(value)}") from None
        return value

    def done(self) -> None:
        """Refuse the fields nobody read."""
        unknown = sorted(set(self.body) - self.seen)
        if unknown:
            raise self.fail(unknown[0], f"is not a known field (known: "
                                        f"{', '.join(sorted(self.seen))})")

