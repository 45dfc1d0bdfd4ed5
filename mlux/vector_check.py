"""The one validator of steering-vector file contents, for loading and listing alike.

Every JSON text a vector file carries (the safetensors header, mlux's metadata blob in a
safetensors or GGUF file) goes through ``parse_json``: bounded nesting (a 1000-level document is
a clear error, never a ``RecursionError``) and no key given twice. ``check_header`` then decides
whether mlux's metadata describes the tensors the file holds, with every field's type checked.
``mlux.vector_files`` and ``mlux.vector_gguf`` call these; nothing else parses vector files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mlux.untrusted import short

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_JSON_DEPTH", "check_header", "json_depth",
           "parse_json"]

FORMAT = "mlux.steering_vector"
FORMAT_VERSION = 1  # of the saved file format; this module reads versions up to this
MAX_JSON_DEPTH = 64  # mlux writes depth <= 4 plus the user's metadata; 64 is generous
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_REQUIRED = ("layers", "hidden_size", "created", "version")
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "model_id": (str, type(None)), "method": (str,), "num_pairs": (int, type(None)),
    "metadata": (dict, type(None)), "norms": (dict, type(None)), "hook_point": (str,),
    "created": (str,), "version": (str,),
}


def parse_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` of untrusted text with nesting bounded by ``MAX_JSON_DEPTH`` and duplicate
    keys refused. ``what`` ("path: the mlux metadata") starts every error message."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8 text ({exc.reason})") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH} "
                         "allowed): not a steering-vector file")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    except _DuplicateKey as exc:
        raise ValueError(f"{what} gives the key {short(exc.args[0])} twice (which one "
                         "counts is ambiguous): damaged or forged file") from None


def check_header(info: Any, layers: list[int], hidden_size: int, where: Path | str
                 ) -> dict[str, Any]:
    """``info`` (parsed mlux metadata) if it describes a vector with these ``layers`` and
    ``hidden_size``; else ``ValueError`` naming ``where`` and the first problem found."""
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{where}: the mlux metadata is not a steering-vector header")
    fmt = info.get("format_version")
    if isinstance(fmt, bool) or not isinstance(fmt, int) or not 1 <= fmt <= FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported format_version {short(fmt)} (this mlux reads "
                         f"1..{FORMAT_VERSION})")
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise ValueError(f"{where}: the mlux metadata lacks {missing}")
    for key, types in _OPTIONAL_TYPES.items():
        value = info.get(key)
        if key in info and (not isinstance(value, types) or isinstance(value, bool)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{where}: metadata field {key!r} must be {names}, got "
                             f"{short(value)}")
    if info["layers"] != layers:
        raise ValueError(f"{where}: metadata lists layers {short(info['layers'])} but the file "
                         f"holds {layers}")
    if info["hidden_size"] != hidden_size or isinstance(info["hidden_size"], bool):
        raise ValueError(f"{where}: metadata says hidden size {short(info['hidden_size'])} but "
                         f"the tensors have {hidden_size}")
    norms = info.get("norms")
    if norms is None:
        return info
    if sorted(norms) != sorted(str(layer) for layer in layers):
        raise ValueError(f"{where}: the metadata's norms name layers {short(sorted(norms))}, "
                         f"the file holds {layers}")
    if not all(_finite(v) for v in norms.values()):
        raise ValueError(f"{where}: the metadata's norms are not all finite numbers")
    return info


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings, in vectorised passes (headers can be large)."""
    raw = np.frombuffer(_STRING.sub("", text).encode("utf-8"), np.uint8)
    steps = np.isin(raw, _OPEN).astype(np.int64) - np.isin(raw, _CLOSE).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
