"""Steering-vector files: mlux's safetensors format and llama.cpp's control-vector GGUF.

* safetensors: tensors ``residuals_{i}`` (float32, shape ``(D,)``) plus one metadata entry
  ``"mlux"`` holding a JSON object with everything else. Never pickle.
* GGUF: llama.cpp adds tensor ``direction.N`` to the output of its 0-based block ``N``, so mlux
  layer ``i`` (hook point ``residuals_i``) <-> ``direction.{i}`` with no offset (repeng's
  convention too); llama.cpp rejects ``direction.0``, so layer 0 cannot be exported.

Writes go through ``mlux.atomic``. ``SteeringVector`` passes its own class in (``vector_cls``),
so this module needs no import of ``mlux.vectors``, which imports it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlux.atomic import PathLike, atomic_write

__all__ = ["FORMAT_VERSION", "HOOK_POINT", "export_gguf", "import_gguf", "load_safetensors",
           "read_summary", "save_safetensors"]

_FORMAT = "mlux.steering_vector"
_META_KEY = "mlux"  # safetensors metadata key holding the JSON blob
_GGUF_META_KEY = "mlux.metadata"  # extra GGUF KV; llama.cpp ignores keys it does not know
_GGUF_ARCH = "controlvector"
_TENSOR_NAME = re.compile(r"(?:residuals_|direction\.)(\d+)")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
HOOK_POINT = "residuals"  # the hook point whose output every direction is added to
FORMAT_VERSION = 1  # of the saved file format; this module reads versions up to this
SteeringVector = Any  # mlux.vectors.SteeringVector, which passes its class in as vector_cls
_VectorType = Any


# -- safetensors ----------------------------------------------------------------------------------


def save_safetensors(vector: SteeringVector, path: PathLike) -> Path:
    """Write a safetensors file atomically (an existing file is replaced only on success)."""
    blob = _header_json(vector)
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
    path = _existing_file(path)
    try:
        arrays, meta = mx.load(str(path), format="safetensors", return_metadata=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    directions = _directions_from_tensors(arrays, path)
    raw = meta.get(_META_KEY)
    if raw is None:
        vector = vector_cls(directions, method="unknown", metadata={"source_format": "safetensors"})
    else:
        vector = _from_header(vector_cls, directions, raw, path)
    if hidden_size is not None:
        vector.check_compatible(hidden_size)
    return vector


def read_summary(path: PathLike) -> dict[str, Any]:
    """The mlux metadata of a saved vector without loading its tensors (for listings).

    Parses only the safetensors header: 8-byte little-endian length, then that much JSON.
    """
    path = _existing_file(path)
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
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if _META_KEY in meta:
        try:
            info = json.loads(meta[_META_KEY])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: the mlux metadata is not valid JSON ({exc})") from exc
        if isinstance(info, dict) and info.get("format") == _FORMAT:
            return info
        raise ValueError(f"{path}: the mlux metadata is not a steering-vector header")
    # No mlux header: describe what the tensor table shows.
    layers = _directions_from_tensors(header, path)
    shapes = {tuple(entry.get("shape", ())) for entry in layers.values()}
    (shape,) = shapes if len(shapes) == 1 else [()]
    return {
        "format": _FORMAT,
        "layers": sorted(layers),
        "hidden_size": shape[0] if len(shape) == 1 else None,
        "method": "unknown",
        "model_id": None,
    }


# -- llama.cpp GGUF -------------------------------------------------------------------------------


def export_gguf(vector: SteeringVector, path: PathLike, model_hint: str | None = None) -> Path:
    """Write a llama.cpp control vector: ``general.architecture = "controlvector"``,
    ``controlvector.model_hint``, ``controlvector.layer_count`` (int32) and one f32 tensor
    ``direction.{i}`` of shape ``(D,)`` per mlux layer ``i``.

    llama.cpp adds ``direction.N`` to the output of its 0-based block ``N``, exactly what
    mlux layer ``N`` means, so the numbers are written unchanged. llama.cpp rejects a file
    containing ``direction.0`` (block 0's output is never steered there), so layer 0 is
    refused here. ``model_hint`` defaults to ``model_id``; the full mlux metadata rides
    along in an extra ``mlux.metadata`` string that llama.cpp ignores.

    Evidence (ggml-org/llama.cpp): ``common_control_vector_load_one`` (common/common.cpp)
    stores ``direction.N`` at offset ``n_embd * (N - 1)`` and rejects ``N == 0``;
    ``llama_adapter_cvec::apply`` (src/llama-adapter.cpp) loads that offset into
    ``tensors[il]`` for ``il = 1 .. n_layer-1`` ("there's never a tensor for layer 0");
    each model graph calls ``build_cvec(cur, il)`` on block ``il``'s output (``l_out``).
    repeng writes ``direction.{i}`` for the output of block ``i`` (``hidden_states[i+1]``).
    Note llama.cpp's own cvector-generator measures ``direction.N`` at block ``N-1``'s
    output, but it is still applied at block ``N``'s, and that is what mlux imports.
    """
    gguf = _import_gguf()
    if 0 in vector.directions:
        raise ValueError(
            "llama.cpp cannot steer layer 0 (its loader rejects 'direction.0'); export "
            "vector.select([layer for layer in vector.layers if layer != 0]) instead"
        )
    hint = model_hint if model_hint is not None else (vector.model_id or "")
    blob = _header_json(vector)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, _GGUF_ARCH)  # writes general.architecture itself
        try:
            writer.add_string(f"{_GGUF_ARCH}.model_hint", hint)
            writer.add_int32(f"{_GGUF_ARCH}.layer_count", len(vector.directions))
            writer.add_string(_GGUF_META_KEY, blob)
            for layer, d in vector.directions.items():
                writer.add_tensor(f"direction.{layer}", np.array(d, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)


def import_gguf(path: PathLike, *, vector_cls: _VectorType) -> SteeringVector:
    """Read a llama.cpp control vector (from mlux, repeng or llama-cvector-generator);
    ``direction.N`` becomes mlux layer ``N``. See ``export_gguf`` for the numbering."""
    gguf = _import_gguf()
    path = _existing_file(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc
    arch = _gguf_string(reader, "general.architecture", path)
    if arch != _GGUF_ARCH:
        raise ValueError(
            f"{path} is not a llama.cpp control vector: general.architecture is {arch!r}, "
            f"expected {_GGUF_ARCH!r}"
        )
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = re.fullmatch(r"direction\.(\d+)", tensor.name)
        if match is None:
            raise ValueError(f"{path}: unexpected tensor {tensor.name!r} (want direction.N)")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, not F32")
        if len(tensor.shape) != 1:
            raise ValueError(f"{path}: tensor {tensor.name} is not 1-D: {list(tensor.shape)}")
        # Copy out of the reader's memory map so the file can be closed or replaced.
        directions[int(match.group(1))] = np.array(tensor.data, dtype=np.float32)
    if not directions:
        raise ValueError(f"{path}: control vector has no direction.N tensors")
    hint = _gguf_string(reader, f"{_GGUF_ARCH}.model_hint", path)
    raw = _gguf_string(reader, _GGUF_META_KEY, path)
    del reader
    if raw is not None:
        return _from_header(vector_cls, directions, raw, path)
    return vector_cls(
        directions,
        model_id=hint or None,
        method="unknown",
        metadata={"source_format": "gguf", "model_hint": hint},
    )


# -- helpers --------------------------------------------------------------------------------------


def _header_json(vector: SteeringVector) -> str:
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


def _existing_file(path: PathLike) -> Path:
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


def _from_header(
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


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # optional: only the llama.cpp interop needs it
        raise ImportError("GGUF export/import needs the 'gguf' package: pip install gguf") from exc
    return gguf


def _gguf_string(reader: Any, key: str, path: Path) -> str | None:
    fld = reader.get_field(key)
    if fld is None:
        return None
    value = fld.contents()
    if not isinstance(value, str):
        raise ValueError(f"{path}: GGUF key {key} should be a string, got {value!r}")
    return value
