"""Crafted steering-vector files (issue 27, items 3 and 6): each one is refused with a clear
ValueError by loading, and listed as bad (never breaking the list) by the vector library;
both decisions come from the one validator, mlux.vector_check. Runs in about a second."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

from mlux.vector_check import MAX_JSON_DEPTH, parse_json
from mlux.vector_library import VectorLibrary
from mlux.vectors import SteeringVector, read_summary

D = 8
DEEP = "[" * 1000 + "]" * 1000


def _meta(**changes: Any) -> dict[str, Any]:
    """A valid mlux header for layers 1 and 2 of ones(D), with `changes` applied."""
    norm = float(np.sqrt(D))
    meta = {"format": "mlux.steering_vector", "format_version": 1, "hook_point": "residuals",
            "model_id": "toy", "method": "mean_diff", "num_pairs": 2, "hidden_size": D,
            "layers": [1, 2], "norms": {"1": norm, "2": norm}, "version": "0.1",
            "created": "2026-12-06T00:00:00+00:00", "metadata": {}}
    meta.update(changes)
    return meta


def _table(names: tuple[str, ...] = ("residuals_1", "residuals_2"), dtype: str = "F32",
           width: int = 4) -> dict[str, Any]:
    return {name: {"dtype": dtype, "shape": [D], "data_offsets": [i * D * width,
                                                                   (i + 1) * D * width]}
            for i, name in enumerate(names)}


def _write(path: Path, header: dict[str, Any] | str, data: bytes) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    blob = text.encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _sparse(path: Path, extra: int) -> Path:
    """`path` grown by `extra` zero bytes without writing them (a sparse file)."""
    os.truncate(path, path.stat().st_size + extra)
    return path


def _ones(n: int = 2, dtype: Any = np.float32) -> bytes:
    return np.ones(n * D, dtype).tobytes()


def _with_meta(meta: dict[str, Any] | str, table: dict[str, Any] | None = None) -> str:
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    return json.dumps({"__metadata__": {"mlux": raw}, **(table or _table())})


SAFETENSORS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "deep JSON header": (lambda p: _write(p, '{"residuals_1": ' + DEEP + "}", _ones(1)),
                         "header is nested 1001 levels deep"),
    "deep JSON metadata": (lambda p: _write(p, _with_meta(DEEP), _ones()),
                           "mlux metadata is nested 1000 levels deep"),
    "shape 2**32 + 96": (lambda p: _write(p, {"residuals_1": {
        "dtype": "F32", "shape": [2**32 + 96], "data_offsets": [0, 96 * 4]}},
        np.ones(96, np.float32).tobytes()), "not a 1-D vector of at most"),
    "duplicate tensor key": (lambda p: _write(p, (
        '{"residuals_1": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}, '
        '"residuals_1": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}'), _ones()),
        "gives the key 'residuals_1' twice"),
    "duplicate metadata key": (lambda p: _write(p, _with_meta(
        json.dumps(_meta())[:-1] + ', "model_id": "other"}'), _ones()),
        "gives the key 'model_id' twice"),
    "overlapping offsets": (lambda p: _write(p, {
        "residuals_1": {"dtype": "F32", "shape": [D], "data_offsets": [0, 4 * D]},
        "residuals_2": {"dtype": "F32", "shape": [D], "data_offsets": [0, 4 * D]}},
        _ones(1)), "data offsets overlap"),
    "non-ASCII layer digits": (lambda p: _write(p, _table(("residuals_\u0661",)), _ones(1)),
                               "unexpected tensor 'residuals_\u0661'"),
    "model_id an int": (lambda p: _write(p, _with_meta(_meta(model_id=5)), _ones()),
                        "'model_id' must be str or null, got 5"),
    "created a list": (lambda p: _write(p, _with_meta(_meta(created=[1])), _ones()),
                       "'created' must be str, got [1]"),
    "F64 data": (lambda p: _write(p, _table(dtype="F64", width=8), _ones(dtype=np.float64)),
                 "dtype 'F64'; steering vectors are read as F32, F16, BF16"),
    "format_version 99": (lambda p: _write(p, _with_meta(_meta(format_version=99)), _ones()),
                          "unsupported format_version 99"),
    "format_version true": (lambda p: _write(p, _with_meta(_meta(format_version=True)),
                                             _ones()), "unsupported format_version True"),
    "NaN values": (lambda p: _write(p, _table(), np.full(2 * D, np.nan, np.float32).tobytes()),
                   "contains NaN values"),
    "gap between tensors": (lambda p: _write(p, {
        "residuals_1": {"dtype": "F32", "shape": [D], "data_offsets": [4, 4 + 4 * D]}},
        _ones(1) + b"\0" * 4), "leave a gap"),
    "huge data section": (lambda p: _sparse(_write(p, _table(), _ones()), 1 << 28),
                          "a steering vector file holds at most 268435456"),
    "huge untrusted name": (lambda p: _write(p, {"x" * 100_000: {}}, b""),
                            "(100002 characters)"),
}


@pytest.mark.parametrize("case", list(SAFETENSORS))
def test_crafted_safetensors_refused_by_load_and_listed_as_bad(case: str, tmp_path: Path
                                                               ) -> None:
    make, message = SAFETENSORS[case]
    lib = VectorLibrary(tmp_path)
    good = SteeringVector({1: np.ones(D, np.float32)}, model_id="toy")
    lib.save("good", good)
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=_escape(message)) as info:
        SteeringVector.load(path)
    assert len(str(info.value)) < 400  # one readable line, never the untrusted value whole
    with pytest.raises(ValueError, match=_escape(message)):
        read_summary(path)
    listing = {entry["name"]: entry for entry in lib.list()}
    json.dumps(listing, allow_nan=False)  # still a strict-JSON answer for the web pages
    assert sorted(listing) == ["bad", "good"]
    assert message in listing["bad"]["error"] and "error" not in listing["good"]
    assert listing["good"]["layers"] == [1] and listing["good"]["model_id"] == "toy"


def test_valid_crafted_files_still_load(tmp_path: Path) -> None:
    """The same builder with nothing wrong: the checks refuse the damage, not the format."""
    plain = SteeringVector.load(_write(tmp_path / "ok.safetensors", _with_meta(_meta()),
                                       _ones()))
    assert plain.layers == [1, 2] and plain.model_id == "toy"
    assert plain.norms[1] == pytest.approx(D ** 0.5)
    half = SteeringVector.load(_write(tmp_path / "h.safetensors", _table(dtype="F16", width=2),
                                      _ones(dtype=np.float16)))
    bf16 = np.full(2 * D, 0x3F80, np.uint16).tobytes()  # bfloat16 1.0 is float32 1.0's top half
    brain = SteeringVector.load(_write(tmp_path / "b.safetensors",
                                       _table(dtype="BF16", width=2), bf16))
    assert half[2].tolist() == brain[2].tolist() == [1.0] * D


def test_what_loading_refuses_is_never_written(tmp_path: Path) -> None:
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    vector = SteeringVector({1: np.ones(D, np.float32)}, metadata={"x": deep})
    with pytest.raises(ValueError, match="nested 66 levels deep; vector files hold at most 64"):
        vector.save(tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_json_depth_bound_is_exact() -> None:
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    assert parse_json('{"a": "[[[[[[" }', "x") == {"a": "[[[[[["}  # brackets in strings count 0
    with pytest.raises(ValueError, match="nested 65 levels"):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "x")


def _gguf(path: Path, strings: dict[str, str]) -> Path:
    writer = gguf.GGUFWriter(path, "controlvector")
    for key, value in strings.items():
        writer.add_string(key, value)
    writer.add_tensor("direction.1", np.ones(D, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_non_utf8_string_names_file_and_key(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "v.gguf", {"controlvector.model_hint": "QQQQ"})
    path.write_bytes(path.read_bytes().replace(b"QQQQ", b"\xff\xfeQQ"))
    with pytest.raises(ValueError, match=r"v\.gguf: GGUF key controlvector\.model_hint is not "
                                         r"UTF-8 text"):
        SteeringVector.import_gguf(path)


@pytest.mark.parametrize(("blob", "message"), [
    (DEEP, "nested 1000 levels deep"),
    (json.dumps(_meta(layers=[1], norms={"1": 1.0}, model_id=7)), "'model_id' must be str"),
    (json.dumps(_meta(layers=[1], norms={"1": 1.0}, format_version=99)),
     "unsupported format_version 99"),
], ids=["deep JSON", "model_id an int", "format_version 99"])
def test_gguf_metadata_goes_through_the_same_validator(blob: str, message: str,
                                                       tmp_path: Path) -> None:
    path = _gguf(tmp_path / "v.gguf", {"controlvector.model_hint": "toy", "mlux.metadata": blob})
    with pytest.raises(ValueError, match=_escape(message)):
        SteeringVector.import_gguf(path)


def test_folder_and_fifo_as_vector_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a folder, not a steering vector file"):
        SteeringVector.load(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # never blocks on open
        SteeringVector.load(fifo)


def _escape(text: str) -> str:
    return re.escape(text)
