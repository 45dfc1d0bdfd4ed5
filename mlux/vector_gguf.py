"""llama.cpp control vectors (GGUF): ``export_gguf`` and ``import_gguf``.

llama.cpp adds tensor ``direction.N`` to the output of its 0-based block ``N``, so mlux layer
``i`` (hook point ``residuals_i``) <-> ``direction.{i}`` with no offset (repeng's convention
too). The reading rules are llama.cpp's own (``common_control_vector_load_one`` in
common/common.cpp), so a file mlux imports is a file llama.cpp loads, with the same numbers:

- a tensor name is ``direction`` + ``.`` + a layer index read like ``std::stoi`` (leading
  spaces and a sign allowed, text after the digits ignored: ``direction.01`` is layer 1);
  any other name, a negative index or ``direction.0`` makes llama.cpp refuse the whole file,
  and so does mlux (block 0's output is never steered there);
- every tensor is F32 and 1-D, all of one length;
- tensors naming the same layer (``direction.1`` and ``direction.01``) are summed, in file order.

Writes go through ``mlux.atomic``; the ``gguf`` package is needed only here.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mlux.atomic import PathLike, atomic_write
from mlux.untrusted import short
from mlux.vector_files import existing_file, from_header, header_json

__all__ = ["UNKNOWN_MODEL_HINT", "export_gguf", "import_gguf", "llama_layer_index"]

_ARCH = "controlvector"
_META_KEY = "mlux.metadata"  # extra GGUF KV holding mlux's JSON header; llama.cpp ignores it
# Written when the vector has no model id: gguf's writer drops an empty string, and readers
# such as repeng's import_gguf refuse a file without controlvector.model_hint.
UNKNOWN_MODEL_HINT = "mlux-unknown"
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")  # what std::stoi reads (C locale)
SteeringVector = Any  # mlux.vectors.SteeringVector, passed in as vector_cls


def llama_layer_index(name: str) -> int | None:
    """The layer llama.cpp reads from a tensor name: the text before the first ``.`` must be
    ``direction`` and the text after it starts with an int (``std::stoi``); None when it
    doesn't or the int is out of int32 range (llama.cpp: "invalid/unparsable")."""
    prefix, dot, rest = name.partition(".")
    match = _STOI.match(rest) if dot and prefix == "direction" else None
    if match is None:
        return None
    index = int(match.group(1))
    return index if -(2**31) <= index < 2**31 else None


def export_gguf(vector: SteeringVector, path: PathLike, model_hint: str | None = None) -> Path:
    """Write a llama.cpp control vector: ``general.architecture = "controlvector"``,
    ``controlvector.model_hint``, ``controlvector.layer_count`` (int32) and one f32 tensor
    ``direction.{i}`` of shape ``(D,)`` per mlux layer ``i``.

    llama.cpp rejects a file containing ``direction.0``, so layer 0 is refused here.
    ``model_hint`` defaults to ``model_id``, else ``"mlux-unknown"`` (never empty: repeng's
    reader needs one); the full mlux metadata rides along in an extra ``mlux.metadata`` string.

    Evidence (ggml-org/llama.cpp): ``common_control_vector_load_one`` (common/common.cpp)
    stores ``direction.N`` at offset ``n_embd * (N - 1)`` and rejects ``N == 0``;
    ``llama_adapter_cvec::apply`` (src/llama-adapter.cpp) loads that offset into
    ``tensors[il]`` for ``il = 1 .. n_layer-1`` ("there's never a tensor for layer 0");
    each model graph calls ``build_cvec(cur, il)`` on block ``il``'s output (``l_out``).
    repeng writes ``direction.{i}`` for the output of block ``i`` (``hidden_states[i+1]``).
    llama.cpp's own cvector-generator measures ``direction.N`` at block ``N-1``'s output, but
    it is still applied at block ``N``'s, and that is what mlux imports.
    """
    gguf = _import_gguf()
    if 0 in vector.directions:
        raise ValueError(
            "llama.cpp cannot steer layer 0 (its loader rejects 'direction.0'); export "
            "vector.select([layer for layer in vector.layers if layer != 0]) instead"
        )
    hint = model_hint or vector.model_id or UNKNOWN_MODEL_HINT
    blob = header_json(vector)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, _ARCH)  # writes general.architecture itself
        try:
            writer.add_string(f"{_ARCH}.model_hint", hint)
            writer.add_int32(f"{_ARCH}.layer_count", len(vector.directions))
            writer.add_string(_META_KEY, blob)
            for layer, d in vector.directions.items():
                writer.add_tensor(f"direction.{layer}", np.array(d, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)


def import_gguf(path: PathLike, *, vector_cls: Any) -> SteeringVector:
    """Read a llama.cpp control vector (from mlux, repeng or llama-cvector-generator) by
    llama.cpp's rules (module docstring); ``direction.N`` becomes mlux layer ``N``. A file
    llama.cpp would refuse is refused whole, with a ValueError saying why."""
    gguf = _import_gguf()
    path = existing_file(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc
    arch = _gguf_string(reader, "general.architecture", path)
    if arch != _ARCH:
        raise ValueError(f"{path} is not a llama.cpp control vector: general.architecture is "
                         f"{short(arch)}, expected {_ARCH!r}")
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        _add_direction(directions, tensor, gguf, path)
    if not directions:
        raise ValueError(f"{path}: control vector has no direction.N tensors")
    hint = _gguf_string(reader, f"{_ARCH}.model_hint", path)
    raw = _gguf_string(reader, _META_KEY, path)
    del reader
    if raw is not None:
        return from_header(vector_cls, directions, raw, path)[0]
    model_id = None if hint in (None, "", UNKNOWN_MODEL_HINT) else hint
    return vector_cls(directions, model_id=model_id, method="unknown",
                      metadata={"source_format": "gguf", "model_hint": hint})


def _add_direction(directions: dict[int, np.ndarray], tensor: Any, gguf: Any, path: Path
                   ) -> None:
    """Check one tensor as llama.cpp does and add it into `directions` (summing repeats)."""
    name = tensor.name
    layer = llama_layer_index(name)
    refused = f"{path}: llama.cpp refuses this file: tensor {short(name)}"
    if layer is None or layer < 0:
        raise ValueError(f"{refused} is not named direction.N with N a layer index >= 1")
    if layer == 0:
        raise ValueError(f"{refused} is layer 0 (llama.cpp never steers block 0's output: "
                         "'invalid (zero) direction tensor layer index')")
    if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
        raise ValueError(f"{path}: tensor {short(name)} is {tensor.tensor_type.name}, not F32")
    if len(tensor.shape) != 1:
        raise ValueError(f"{path}: tensor {short(name)} is not 1-D: {list(tensor.shape)}")
    # Copy out of the reader's memory map so the file can be closed or replaced.
    data = np.array(tensor.data, dtype=np.float32)
    sizes = {d.shape[0] for d in directions.values()}
    if sizes and data.shape[0] not in sizes:
        raise ValueError(f"{path}: tensor {short(name)} has {data.shape[0]} values, the others "
                         f"{sizes.pop()} (llama.cpp: 'does not match previous dimensions')")
    # llama.cpp adds every tensor into its layer's slot, so two names for one layer sum.
    directions[layer] = directions[layer] + data if layer in directions else data


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
    if fld.types != [_import_gguf().GGUFValueType.STRING]:
        kinds = "/".join(t.name for t in fld.types) or "nothing"
        raise ValueError(f"{path}: GGUF key {key} should be a string, got {kinds}")
    try:  # decoded here, not by gguf, so that a bad byte names the file and the key
        return bytes(fld.parts[-1]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: GGUF key {key} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
