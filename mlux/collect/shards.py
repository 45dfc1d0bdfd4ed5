"""Shard files: safetensors written byte-for-byte reproducibly, with a checksum recorded at write
time and verified when read back.

    <result_dir>/activations/<category>/<hook>/shard_00000.safetensors

A shard holds samples `[index * shard_size, ...)` of its category: one tensor per position
(`last`, `mean`: `(N, D)`; `all`, `generated`: `(tokens, D)` with `<pos>_offsets` `(N + 1,)`) and
`sample_index` `(N,)`. The header lists tensors and metadata in sorted order (the safetensors
writer emits metadata in hash order), so a rerun writes identical bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from safetensors import safe_open

from mlux.atomic import atomic_write_bytes

__all__ = ["read_shard_tensor", "serialize_safetensors", "shard_entry", "shard_shape",
           "verify_shard", "write_shard", "write_shard_bytes"]

_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "uint32": "U32",
           "bool": "BOOL"}
_HASH_BLOCK = 1 << 20


def serialize_safetensors(tensors: Mapping[str, np.ndarray],
                          metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """safetensors bytes with tensors in name order and a sorted JSON header (deterministic)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.name not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in a shard")
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def write_shard(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
                ) -> dict[str, Any]:
    """Atomically write one shard; return its manifest entry (bytes, sha256, shapes, dtypes)."""
    data = serialize_safetensors(tensors, metadata)
    write_shard_bytes(path, data)
    return shard_entry(data, tensors)


def shard_entry(data: bytes, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The manifest entry of a shard serialized to `data` from `tensors`."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                        for k, v in sorted(tensors.items())}}


def write_shard_bytes(path: Path, data: bytes) -> None:
    """Atomically write an already serialized shard (ENOSPC gets a hint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        hint = (" (disk full: free space and rerun; finished shards are kept and skipped)"
                if e.errno == errno.ENOSPC else "")
        raise OSError(e.errno, f"{e.strerror or e}{hint}") from None


_REDO = "delete it and rerun `mlux collect` with the same config to recompute its chunk"


def verify_shard(path: Path, size: Optional[int], sha256: Optional[str] = None) -> None:
    """Raise ValueError naming `path` if it is missing, has another size than recorded, or
    (when `sha256` is given) other bytes than were written."""
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} is missing; rerun `mlux collect` with the same "
                                "config to recompute its chunk")
    found = path.stat().st_size
    if size is not None and found != size:
        raise ValueError(f"shard {path} has {found} bytes, {size} were written (truncated or "
                         f"overwritten); {_REDO}")
    if sha256 is not None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
        if h.hexdigest() != sha256:
            raise ValueError(f"shard {path} fails its checksum (its bytes changed after it was "
                             f"written); {_REDO}")


def _open(path: Path):  # noqa: ANN202 - a safetensors handle
    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:  # SafetensorError and OSError: name the file either way
        raise ValueError(f"shard {path} is unreadable ({e}); {_REDO}") from None


def read_shard_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor of a shard, read without loading the others."""
    with _open(path) as f:
        if name not in f.keys():
            raise ValueError(f"shard {path} has no tensor {name!r} (has {', '.join(f.keys())})")
        return f.get_tensor(name)


def shard_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape of one tensor, from the header only."""
    with _open(path) as f:
        if name not in f.keys():
            raise ValueError(f"shard {path} has no tensor {name!r} (has {', '.join(f.keys())})")
        return tuple(int(n) for n in f.get_slice(name).get_shape())
