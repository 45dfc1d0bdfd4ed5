"""Steering-vector files in mlux's safetensors format (GGUF: ``mlux.vector_gguf``).

Tensors ``residuals_{i}`` (float32, shape ``(D,)``) plus one metadata entry ``"mlux"`` holding a
JSON object with everything else. Never pickle. Writes go through ``mlux.atomic``.
``SteeringVector`` passes its own class in (``vector_cls``), so this module needs no import of
``mlux.vectors``, which imports it. ``header_json``, ``from_header`` and ``existing_file`` are
shared with ``mlux.vector_gguf``. Files are parsed here (never by ``mx.load``, which trusts the
header) and judged by ``mlux.vector_check``: loading and the library's listing read a file the
same way, so what is listed as fine loads.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import mlx.core as mx
import numpy as np

from mlux.atomic import PathLike, atomic_write
from mlux.untrusted import short
from mlux.vector_check import (
    FORMAT,
    FORMAT_VERSION,
    MAX_JSON_DEPTH,
    check_header,
    json_depth,
    parse_json,
)

__all__ = ["FORMAT_VERSION", "HOOK_POINT", "load_safetensors", "read_summary", "read_vector",
           "save_safetensors"]

_META_KEY = "mlux"  # safetensors metadata key holding the JSON blob
# ASCII digits only: `\d` would take "residuals_\u0661" (Arabic-Indic one) for layer 1.
_TENSOR_NAME = re.compile(r"(?:residuals_|direction\.)([0-9]+)")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAX_WIDTH = 1 << 20  # no hidden size comes near; 2**32 + 96 wraps to 96 in 32-bit readers
_MAX_DATA_BYTES = 1 << 28  # 256 MiB: 128 layers x 65536 floats is 32 MiB
_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # BF16 is widened by hand (_decode)
HOOK_POINT = "residuals"  # the hook point whose output every direction is added to
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
    vector, _ = read_vector(path, vector_cls=vector_cls)
    if hidden_size is not None:
        vector.check_compatible(hidden_size)
    return vector


def read_summary(path: PathLike, *, vector_cls: _VectorType) -> dict[str, Any]:
    """The mlux metadata of a saved vector (for listings), after the same checks as loading:
    a file listed as fine is a file that loads. A file without an mlux header gets a summary
    of what its tensors say."""
    vector, info = read_vector(path, vector_cls=vector_cls)
    if info is not None:
        return info
    return {"format": FORMAT, "layers": vector.layers, "hidden_size": vector.hidden_size,
            "method": vector.method, "model_id": None,
            "norms": {str(layer): n for layer, n in vector.norms.items()}}


def read_vector(path: PathLike, *, vector_cls: _VectorType
                ) -> tuple[SteeringVector, dict[str, Any] | None]:
    """The vector in a safetensors file and its parsed mlux metadata (None if it has none).
    The file is parsed here, never by a library that trusts its header (``mx.load`` reads a
    shape of 2^32 + 96 as 96): bounded JSON, unique keys, a tensor table whose entries tile
    the data exactly, F32/F16/BF16 values."""
    path = existing_file(path)
    with open(path, "rb") as fh:
        header, meta, data_start = _read_header(fh, path)
        size = os.fstat(fh.fileno()).st_size - data_start
        if size > _MAX_DATA_BYTES:  # checked before reading it: a listing never loads gigabytes
            raise ValueError(f"{path} holds {size} bytes of tensors; a steering vector file "
                             f"holds at most {_MAX_DATA_BYTES}")
        spans = _check_table(header, size, path)
        data = fh.read(size)
    directions = {layer: _decode(data, header[name]["dtype"], span)
                  for layer, (name, span) in spans.items()}
    raw = meta.get(_META_KEY)
    if raw is None:
        vector = vector_cls(directions, method="unknown", metadata={"source_format": "safetensors"})
        return vector, None
    return from_header(vector_cls, directions, raw, path)


def _read_header(fh: BinaryIO, path: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(tensor table, ``__metadata__``, offset of the data): 8-byte little-endian length,
    then that much JSON."""
    bad = f"{path} is not a readable safetensors file"
    head = fh.read(8)
    if len(head) != 8:
        raise ValueError(f"{bad} (too short)")
    (size,) = struct.unpack("<Q", head)
    if size > _MAX_HEADER_BYTES:
        raise ValueError(f"{bad} (header length {size})")
    text = fh.read(size)
    if len(text) != size:
        raise ValueError(f"{bad} (the header is cut short)")
    header = parse_json(text, f"{bad}: its header")
    if not isinstance(header, dict):
        raise ValueError(f"{bad} (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{bad} (__metadata__ must map names to strings)")
    return header, meta, 8 + size


def _check_table(header: Mapping[str, Any], data_bytes: int, path: Path
                 ) -> dict[int, tuple[str, tuple[int, int]]]:
    """Layer -> (tensor name, byte span), after checking every entry: a named layer, a 1-D
    tensor of one read dtype, all of one length, the spans tiling the data exactly."""
    spans: dict[int, tuple[str, tuple[int, int]]] = {}
    sizes = set()
    for layer, name in _layers(header, path).items():
        entry = header[name] if isinstance(header[name], dict) else {}
        dtype, shape, span = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: layer {layer}'s tensor has dtype {short(dtype, 20)}; "
                             f"steering vectors are read as {', '.join(_DTYPES)}")
        if not (isinstance(shape, list) and len(shape) == 1 and _whole(shape[0])
                and 0 < shape[0] <= _MAX_WIDTH and isinstance(span, list) and len(span) == 2
                and all(_whole(x) for x in span)
                and span[1] - span[0] == shape[0] * np.dtype(_DTYPES[dtype]).itemsize):
            raise ValueError(f"{path}: layer {layer}'s tensor is not a 1-D vector of at most "
                             f"{_MAX_WIDTH} values matching its data span (damaged file?)")
        if span[1] > data_bytes:
            raise ValueError(f"{path} is truncated: layer {layer}'s data ends at byte "
                             f"{span[1]}, the file holds {max(data_bytes, 0)}")
        spans[layer] = (name, (span[0], span[1]))
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"{path}: the layers differ in hidden size ({sorted(sizes)})")
    end = 0
    for start, stop in sorted(span for _, span in spans.values()):
        if start != end:  # the safetensors rule: the data is indexed whole, without holes
            problem = "overlap" if start < end else "leave a gap"
            raise ValueError(f"{path}: the tensors' data offsets {problem} at byte "
                             f"{min(start, end)} (damaged or forged file)")
        end = stop
    if end != data_bytes:
        raise ValueError(f"{path}: {data_bytes - end} bytes after the last tensor (damaged file)")
    return dict(sorted(spans.items()))


def _decode(data: bytes, dtype: str, span: tuple[int, int]) -> np.ndarray:
    raw = np.frombuffer(data[span[0]:span[1]], _DTYPES[dtype])
    if dtype == "BF16":  # numpy has no bfloat16: the high half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- helpers --------------------------------------------------------------------------------------


def header_json(vector: SteeringVector) -> str:
    header = {
        "format": FORMAT,
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
        text = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"steering vector metadata is not JSON-serialisable: {exc}") from exc
    if json_depth(text) > MAX_JSON_DEPTH:  # what loading would refuse is never written
        raise ValueError(f"steering vector metadata is nested {json_depth(text)} levels deep; "
                         f"vector files hold at most {MAX_JSON_DEPTH}")
    return text


def existing_file(path: PathLike) -> Path:
    """``path`` if it is a regular file; else an error saying what it is instead (a folder, a
    FIFO would block the reader forever, nothing)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a steering vector file (give the "
                                ".safetensors or .gguf file inside it)")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a pipe or device?); give a steering "
                         "vector file")
    if not path.is_file():
        raise FileNotFoundError(f"no steering vector file at {path}")
    return path


def _layers(header: Mapping[str, Any], path: Path) -> dict[int, str]:
    """Layer -> tensor name, from names ``residuals_N`` / ``direction.N``; one name per layer."""
    layers: dict[int, str] = {}
    for name in header:
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise ValueError(
                f"{path}: unexpected tensor {short(name)}; steering vector tensors are named "
                f"'{HOOK_POINT}_N' (or 'direction.N')"
            )
        layer = int(match.group(1))
        if layer in layers:
            raise ValueError(f"{path}: layer {layer} appears twice")
        layers[layer] = name
    if not layers:
        raise ValueError(f"{path}: file holds no steering vector tensors")
    return layers


def from_header(vector_cls: _VectorType, directions: dict[int, Any], raw: str, path: Path
                ) -> tuple[SteeringVector, dict[str, Any]]:
    """The vector and its header, once ``check_header`` accepts the metadata ``raw``."""
    info = parse_json(raw, f"{path}: the mlux metadata")
    hidden_size = int(np.shape(next(iter(directions.values())))[0])
    info = check_header(info, sorted(directions), hidden_size, path)
    vector = vector_cls(
        directions,
        model_id=info.get("model_id"),
        method=info.get("method", "unknown"),
        num_pairs=info.get("num_pairs"),
        metadata=info.get("metadata") or {},
        created=info["created"],
        version=info["version"],
    )
    return vector, info
