"""llama.cpp control vectors (mlux.vector_gguf): the file as llama.cpp's loader and repeng's
reader see it, written with the `gguf` package directly and read back by their rules."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

from mlux.vector_gguf import UNKNOWN_MODEL_HINT, llama_layer_index
from mlux.vectors import SteeringVector

D = 12


def _directions(layers: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(D).astype(np.float32) for layer in layers}


@pytest.fixture
def vec() -> SteeringVector:
    return SteeringVector(_directions([2, 5, 7]), model_id="mlx-community/Tiny-4bit",
                          num_pairs=4, metadata={"prompts": [["happy", "sad"]]})


def _raw(v: SteeringVector) -> dict[int, bytes]:
    return {layer: a.tobytes() for layer, a in v.to_numpy().items()}


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector",
                kv: Callable[[Any], None] = lambda writer: None) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    kv(writer)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def repeng_import(path: Path) -> tuple[str, dict[int, np.ndarray]]:
    """repeng's ControlVector.import_gguf, line for line (vgel/repeng, repeng/extract.py)."""
    reader = gguf.GGUFReader(path)
    archf = reader.get_field("general.architecture")
    if not archf or not len(archf.parts):
        warnings.warn(".gguf file missing architecture field", stacklevel=2)
    else:
        arch = str(bytes(archf.parts[-1]), encoding="utf-8", errors="replace")
        if arch != "controlvector":
            warnings.warn(f".gguf file with architecture {arch!r} does not appear to be a "
                          "control vector!", stacklevel=2)
    modelf = reader.get_field("controlvector.model_hint")
    if not modelf or not len(modelf.parts):
        raise ValueError(".gguf file missing controlvector.model_hint field")
    model_hint = str(bytes(modelf.parts[-1]), encoding="utf-8")
    directions = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        try:
            layer = int(tensor.name.split(".")[1])
        except (IndexError, ValueError):
            raise ValueError(f".gguf file has invalid direction field name: {tensor.name}"
                             ) from None
        directions[layer] = tensor.data
    return model_hint, directions


def llama_cpp_load(path: Path) -> dict[int, np.ndarray] | None:
    """common_control_vector_load_one (llama.cpp common/common.cpp), transliterated: the
    per-layer sums it adds to block N's output, or None where it refuses the file."""
    reader = gguf.GGUFReader(path)
    n_embd, data = -1, {}
    for tensor in reader.tensors:
        layer = llama_layer_index(tensor.name)  # name.find('.'), "direction", std::stoi
        if layer is None or layer <= 0 or tensor.tensor_type != gguf.GGMLQuantizationType.F32 \
                or len(tensor.shape) != 1 or n_embd not in (-1, tensor.data.size):
            return None
        n_embd = tensor.data.size
        data[layer] = data.get(layer, np.zeros(n_embd, np.float32)) + tensor.data
    return data if n_embd != -1 else None


# -- writing ---------------------------------------------------------------------------------------


def test_gguf_round_trip_is_exact(vec: SteeringVector, tmp_path: Path) -> None:
    back = SteeringVector.import_gguf(vec.export_gguf(tmp_path / "v.gguf"))
    assert _raw(back) == _raw(vec) and back.metadata == vec.metadata
    assert (back.model_id, back.num_pairs, back.created) == (vec.model_id, 4, vec.created)
    assert os.listdir(tmp_path) == ["v.gguf"]


def test_gguf_layout_read_independently(vec: SteeringVector, tmp_path: Path) -> None:
    """llama.cpp adds tensor ``direction.N`` to the output of its 0-based block N, the same
    place as mlux layer N, so the names carry the mlux layer numbers unchanged."""
    path = vec.export_gguf(tmp_path / "v.gguf", model_hint="llama")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.INT32] and count.contents() == 3
    assert sorted(t.name for t in reader.tensors) == ["direction.2", "direction.5", "direction.7"]
    loaded = llama_cpp_load(path)
    assert loaded is not None and {k: a.tobytes() for k, a in loaded.items()} == _raw(vec)


def test_model_hint_is_never_empty_so_repeng_reads_it(vec: SteeringVector,
                                                      tmp_path: Path) -> None:
    """gguf's writer drops an empty string, and repeng's reader refuses a file without a
    hint: with no model id (e.g. a sum of two models' vectors) mlux writes "mlux-unknown"."""
    hint, _ = repeng_import(vec.export_gguf(tmp_path / "own.gguf"))
    assert hint == vec.model_id
    other = SteeringVector(_directions([5, 9], seed=1), model_id="another/model")
    with pytest.warns(UserWarning, match="different models"):
        mixed = vec + other
    assert mixed.model_id is None
    for i, v in enumerate([mixed, SteeringVector(_directions([1]))]):
        path = v.export_gguf(tmp_path / f"anon{i}.gguf", model_hint="")
        hint, directions = repeng_import(path)
        assert hint == UNKNOWN_MODEL_HINT == "mlux-unknown"
        assert {k: a.tobytes() for k, a in directions.items()} == _raw(v)
        assert SteeringVector.import_gguf(path).model_id is None
    bare = _write_gguf(tmp_path / "bare.gguf", {"direction.1": np.ones(D, np.float32)},
                       kv=lambda w: w.add_string("controlvector.model_hint", "mlux-unknown"))
    assert SteeringVector.import_gguf(bare).model_id is None


def test_gguf_export_refuses_layer_zero(tmp_path: Path) -> None:
    v = SteeringVector(_directions([0, 1]))
    with pytest.raises(ValueError, match=r"llama.cpp cannot steer layer 0 .*direction\.0"):
        v.export_gguf(tmp_path / "v.gguf")
    assert os.listdir(tmp_path) == []
    v.select([1]).export_gguf(tmp_path / "v.gguf")


def test_export_gguf_failure_keeps_previous_file(
    vec: SteeringVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vec.export_gguf(tmp_path / "v.gguf")
    before = path.read_bytes()

    def broken_tensors(self, *, progress: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.fout[0].write(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken_tensors)
    with pytest.raises(OSError, match="disk full"):
        (vec * 5).export_gguf(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["v.gguf"]


# -- reading: llama.cpp's rules --------------------------------------------------------------------


@pytest.mark.parametrize("count_type", ["uint32", "int32"])
def test_import_reference_gguf(count_type: str, tmp_path: Path) -> None:
    """As repeng (uint32 count) and llama.cpp's cvector-generator (int32) write them."""
    raw = _directions([14, 15, 16], seed=7)

    def kv(writer: Any) -> None:
        writer.add_string("controlvector.model_hint", "mistral")
        getattr(writer, f"add_{count_type}")("controlvector.layer_count", len(raw))

    path = _write_gguf(tmp_path / "ref.gguf", {f"direction.{k}": a for k, a in raw.items()},
                       kv=kv)
    v = SteeringVector.import_gguf(path)
    assert v.layers == [14, 15, 16]  # direction.N is mlux layer N: no renumbering
    assert _raw(v) == {k: a.tobytes() for k, a in raw.items()}
    assert v.model_id == "mistral" and v.method == "unknown"
    assert v.metadata == {"source_format": "gguf", "model_hint": "mistral"}


def test_layer_names_read_as_llama_cpp_reads_them() -> None:
    cases = {"direction.1": 1, "direction.01": 1, "direction.+2": 2, "direction. 3": 3,
             "direction.4x": 4, "direction.5.bias": 5, "direction.0": 0, "direction.-1": -1,
             "direction.": None, "direction.x": None, "direction": None, "direction_1": None,
             "blk.1": None, "direction.99999999999": None, "direction.٣": None}
    assert {name: llama_layer_index(name) for name in cases} == cases


def test_names_for_one_layer_are_summed_as_llama_cpp_does(tmp_path: Path) -> None:
    raw = _directions([1, 2, 3, 4], seed=3)
    tensors = {"direction.1": raw[1], "direction.3": raw[3], "direction.01": raw[2],
               "direction.001": raw[4]}
    path = _write_gguf(tmp_path / "dup.gguf", tensors)
    v = SteeringVector.import_gguf(path)
    reference = llama_cpp_load(path)
    assert v.layers == [1, 3] and reference is not None
    assert _raw(v) == {k: a.tobytes() for k, a in reference.items()}
    assert v[1].tolist() == ((raw[1] + raw[2]) + raw[4]).tolist()  # in file order, float32


@pytest.mark.parametrize(("tensors", "message"), [
    ({"direction.2": np.ones(D, np.float32), "direction.0": np.ones(D, np.float32)},
     r"refuses this file: tensor 'direction\.0' is layer 0"),
    ({"direction.00": np.ones(D, np.float32)}, "is layer 0"),
    ({"direction.-1": np.ones(D, np.float32)}, r"'direction\.-1' is not named direction\.N"),
    ({"direction.x": np.ones(D, np.float32)}, "is not named direction.N"),
    ({"blk.1.bias": np.ones(D, np.float32)}, "tensor 'blk.1.bias' is not named direction.N"),
    ({"direction.1": np.ones(4, np.float16)}, "is F16, not F32"),
    ({"direction.1": np.ones((2, 2), np.float32)}, "not 1-D"),
    ({"direction.1": np.ones(D, np.float32), "direction.2": np.ones(4, np.float32)},
     "has 4 values, the others 12"),
    ({}, "no direction.N tensors"),
])
def test_files_llama_cpp_refuses_are_refused_whole(tensors: dict[str, np.ndarray], message: str,
                                                   tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "bad.gguf", tensors)
    assert llama_cpp_load(path) is None
    with pytest.raises(ValueError, match=message):
        SteeringVector.import_gguf(path)


def test_import_gguf_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SteeringVector.import_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not gguf")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        SteeringVector.import_gguf(junk)
    llama = _write_gguf(tmp_path / "llama.gguf", {"direction.1": np.ones(4, np.float32)}, "llama")
    with pytest.raises(ValueError, match="general.architecture is 'llama'"):
        SteeringVector.import_gguf(llama)
