"""Steering-vector files in mlux's safetensors format (GGUF: ``mlux.vector_gguf``).

Tensors ``residuals_{i}`` (float32, shape ``(D,)``) plus one metadata entry ``"mlux"`` holding a
JSON object with everything else. Never pickle. Writes go through ``mlux.atomic``.
``SteeringVector`` passes its own class in (``vector_cls``), so this module needs no import of
``mlux.vectors``, which imports it. ``header_json``, ``from_header`` and ``existing_file`` are
shared with ``mlux.vector_gguf``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlux.atomic import PathLike, atomic_write

__all__ = ["FORMAT_VERSION", "HOOK_POINT", "load_safetensors", "read_summary",
           "save_safetensors"]

_FORMAT = "mlux.steering_vector"
_META_KEY = "mlux"  # safetensors metadata key holding the JSON blob
_TENSOR_NAME = re.compile(r"(?:residuals_|direction\.)(\d+)")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U64": 8, "U32": 4, "U16": 2, "U8": 1}
HOOK_POINT = "residuals"  # the hook point whose output every direction is added to
FORMAT_VERSION = 1  # of the saved file format; this module reads versions up to this
SteeringVector = Any  # mlux.vectors.SteeringVector, which passes its class in as vector_cls
_VectorType = Any


# -- safetensors ----------------------------------------------------------------------------------


def save_safetensors(vector: SteeringVector, path: PathLike) -> Path:
    """Write a safetensors file atomically (an existing file is replaced only on success)."""
    blob = header_json(vector)
    arrays = {f"{HOOK_POINT}_{layer}": d for layer, d in vector.directions.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            mx.save_safetensors(fh, arrays, metadata={_META_KEY: blob})

    return atomic_write(path, write)


def load_safetensors(
    path: PathLike, hidden_size: int | None = None, *, vector_cls: _VectorType
) -> SteeringVector:
    """Read a file written by ``save_safetensors``; also accepts bare ``residuals_N`` or
    ``direction.N`` safetensors without mlux metadata. ``hidden_size``, if given, must match."""
    path = existing_file(path)
    try:
        arrays, meta = mx.load(str(path), format="safetensors", return_metadata=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    directions = _directions_from_tensors(arrays, path)
    raw = meta.get(_META_KEY)
    if raw is None:
        vector = vector_cls(directions, method="unknown", metadata={"source_format": "safetensors"})
    else:
        vector = from_header(vector_cls, directions, raw, path)
    if hidden_size is not None:
        vector.check_compatible(hidden_size)
    return vector


def read_summary(path: PathLike) -> dict[str, Any]:
    """The mlux metadata of a saved vector without loading its tensors (for listings).

    Parses only the safetensors header (8-byte little-endian length, then that much JSON) and
    checks its tensor table against the file: one 1-D numeric tensor per layer, all of one
    length, whose bytes the file holds. So a truncated or damaged file fails here, not only
    when loaded. A file without an mlux header gets a summary without norms.
    """
    path = existing_file(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header length {size})")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a safetensors file ({exc})") from exc
        data_bytes = os.fstat(fh.fileno()).st_size - 8 - size
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    layers = _directions_from_tensors(header, path)
    hidden_size = _check_table(layers, data_bytes, path)
    if not isinstance(meta, dict) or _META_KEY not in meta:
        return {"format": _FORMAT, "layers": sorted(layers), "hidden_size": hidden_size,
                "method": "unknown", "model_id": None}
    try:
        info = json.loads(meta[_META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the mlux metadata is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise ValueError(f"{path}: the mlux metadata is not a steering-vector header")
    if info.get("layers") != sorted(layers) or info.get("hidden_size") != hidden_size:
        raise ValueError(f"{path}: the metadata does not match the tensors (damaged file)")
    norms = info.get("norms")
    if isinstance(norms, dict) and not all(_finite(v) for v in norms.values()):
        raise ValueError(f"{path}: the metadata's norms are not all finite numbers")
    return info


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_table(entries: Mapping[int, Any], data_bytes: int, path: Path) -> int:
    """The hidden size, after checking each layer's tensor entry against the file's size."""
    sizes = set()
    for layer, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        width, shape, span = (_DTYPE_BYTES.get(entry.get("dtype")), entry.get("shape"),
                              entry.get("data_offsets"))
        if not (width and isinstance(shape, list) and len(shape) == 1 and _whole(shape[0])
                and shape[0] > 0 and isinstance(span, list) and len(span) == 2
                and all(_whole(x) for x in span) and span[1] - span[0] == shape[0] * width):
            raise ValueError(f"{path}: layer {layer}'s tensor is not a 1-D numeric vector "
                             "(damaged file?)")
        if span[1] > data_bytes:
            raise ValueError(f"{path} is truncated: layer {layer}'s data ends at byte "
                             f"{span[1]}, the file holds {max(data_bytes, 0)}")
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"{path}: the layers differ in hidden size ({sorted(sizes)})")
    return sizes.pop()


# -- helpers --------------------------------------------------------------------------------------


def header_json(vector: SteeringVector) -> str:
    header = {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "hook_point": HOOK_POINT,
        "model_id": vector.model_id,
        "method": vector.method,
        "num_pairs": vector.num_pairs,
        "hidden_size": vector.hidden_size,
        "layers": vector.layers,
        "norms": {str(layer): n for layer, n in vector.norms.items()},
        "version": vector.version,
        "created": vector.created,
        "metadata": vector.metadata,
    }
    try:
        return json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"steering vector metadata is not JSON-serialisable: {exc}") from exc


def existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no steering vector file at {path}")
    return path


def _directions_from_tensors(arrays: Mapping[str, Any], path: Path) -> dict[int, Any]:
    directions: dict[int, Any] = {}
    for name, value in arrays.items():
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise ValueError(
                f"{path}: unexpected tensor {name!r}; steering vector tensors are named "
                f"'{HOOK_POINT}_N' (or 'direction.N')"
            )
        layer = int(match.group(1))
        if layer in directions:
            raise ValueError(f"{path}: layer {layer} appears twice")
        directions[layer] = value
    if not directions:
        raise ValueError(f"{path}: file holds no steering vector tensors")
    return directions


def from_header(
    vector_cls: _VectorType, directions: dict[int, Any], raw: str, path: Path
) -> SteeringVector:
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the mlux metadata is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise ValueError(f"{path}: the mlux metadata is not a steering-vector header")
    fmt = info.get("format_version")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format_version {fmt!r} (this mlux reads up to {FORMAT_VERSION})"
        )
    missing = [k for k in ("layers", "hidden_size", "created", "version") if k not in info]
    if missing:
        raise ValueError(f"{path}: the mlux metadata lacks {missing}")
    if info["layers"] != sorted(directions):
        raise ValueError(
            f"{path}: metadata lists layers {info['layers']} "
            f"but the file holds {sorted(directions)}"
        )
    vector = vector_cls(
        directions,
        model_id=info.get("model_id"),
        method=info.get("method", "unknown"),
        num_pairs=info.get("num_pairs"),
        metadata=info.get("metadata") or {},
        created=info["created"],
        version=info["version"],
    )
    if vector.hidden_size != info["hidden_size"]:
        raise ValueError(
            f"{path}: metadata says hidden size {info['hidden_size']} but the tensors have "
            f"{vector.hidden_size}"
        )
    return vector
