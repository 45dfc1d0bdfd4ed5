"""Tests for mlux.vectors (SteeringVector, file formats) and mlux.vector_library."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlux.vector_library import VectorLibrary
from mlux.vectors import SteeringVector, read_summary

D = 16


def _dirs(layers: list[int], seed: int = 0, d: int = D) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(d).astype(np.float32) for layer in layers}


@pytest.fixture
def vec() -> SteeringVector:
    return SteeringVector(
        _dirs([2, 5, 7]),
        model_id="mlx-community/Tiny-4bit",
        method="mean_diff",
        num_pairs=12,
        metadata={"hook_point": "residuals", "prompts": [["happy", "sad"]], "nested": {"a": 1.5}},
    )


def _bits(v: SteeringVector) -> dict[int, bytes]:
    return {layer: a.tobytes() for layer, a in v.to_numpy().items()}


def _assert_same(a: SteeringVector, b: SteeringVector) -> None:
    assert _bits(a) == _bits(b)
    assert (a.model_id, a.method, a.num_pairs, a.metadata, a.created, a.version) == (
        b.model_id,
        b.method,
        b.num_pairs,
        b.metadata,
        b.created,
        b.version,
    )


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# -- construction and validation -----------------------------------------------------------------


def test_construction_converts_and_sorts() -> None:
    v = SteeringVector({3: [1.0, 2.0], 1: np.array([3.0, 4.0]), 2: mx.array([0, 1], mx.int32)})
    assert v.layers == [1, 2, 3]
    assert v.hidden_size == 2
    assert all(d.dtype == mx.float32 for d in v.directions.values())
    assert v.norms[1] == pytest.approx(5.0)
    assert np.array_equal(np.array(v[3]), [1.0, 2.0])
    assert 3 in v and 4 not in v
    with pytest.raises(KeyError, match="layer 4"):
        v[4]
    assert "hidden_size=2" in repr(v) and "layers=[1, 2, 3]" in repr(v) and "1: 5" in repr(v)


@pytest.mark.parametrize(
    ("directions", "message"),
    [
        ({}, "at least one layer"),
        ({0: [1.0, math.nan]}, "layer 0: .*NaN"),
        ({4: [1.0, math.inf]}, "layer 4: .*infinite"),
        ({1: [1.0, -math.inf]}, "layer 1: .*infinite"),
        ({2: [[1.0, 2.0]]}, r"layer 2: .*1-D"),
        ({2: 3.0}, r"layer 2: .*1-D"),
        ({2: []}, "layer 2: direction is empty"),
        ({0: [1.0, 2.0], 5: [1.0, 2.0, 3.0]}, "layer 5: hidden size 3 differs from layer 0's 2"),
        ({-1: [1.0]}, ">= 0"),
        ({"3": [1.0]}, "integers"),
        ({1: ["a", "b"]}, "layer 1: .*numeric"),
        ({1: np.array([1e39])}, "layer 1: .*infinite"),  # overflows float32
        ({1: np.full(8, 3e38, np.float32)}, "layer 1: the direction's norm overflows float32"),
    ],
)
def test_validation_errors_name_the_problem(directions: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SteeringVector(directions)


def test_num_pairs_and_metadata_validated() -> None:
    with pytest.raises(ValueError, match="num_pairs"):
        SteeringVector({0: [1.0]}, num_pairs=-1)
    with pytest.raises(ValueError, match="metadata must be a dict"):
        SteeringVector({0: [1.0]}, metadata=["x"])  # type: ignore[arg-type]


def test_defaults() -> None:
    v = SteeringVector({0: [1.0]})
    assert v.method == "mean_diff" and v.model_id is None and v.metadata == {}
    assert v.created.endswith("+00:00")  # ISO time in UTC
    assert isinstance(v.version, str) and v.version


# -- arithmetic -----------------------------------------------------------------------------------


def test_arithmetic_identities(vec: SteeringVector) -> None:
    a = vec.to_numpy()
    assert _bits(vec + vec) == _bits(vec * 2)
    assert _bits(vec * 2) == _bits(2 * vec)
    assert all(not x.any() for x in (vec - vec).to_numpy().values())
    assert _bits(-vec) == _bits(vec * -1)
    halved = (vec / 2).to_numpy()
    assert all(np.array_equal(halved[k], a[k] / np.float32(2)) for k in a)
    assert _bits((vec * 4) / 4) == _bits(vec)


def test_interpolation_matches_hand_computation(vec: SteeringVector) -> None:
    other = SteeringVector(_dirs([2, 5, 7], seed=1), model_id=vec.model_id)
    mixed = vec * 0.3 + other * 0.7
    a, b = vec.to_numpy(), other.to_numpy()
    for layer, got in mixed.to_numpy().items():
        np.testing.assert_allclose(got, a[layer] * 0.3 + b[layer] * 0.7, rtol=1e-6, atol=1e-7)
    assert mixed.method == "arithmetic"
    assert mixed.model_id == vec.model_id
    assert mixed.num_pairs is None


def test_binary_ops_use_layer_union_and_merge_metadata(vec: SteeringVector) -> None:
    other = SteeringVector(
        _dirs([5, 9], seed=3), model_id="other", metadata={"hook_point": "residuals"}
    )
    with pytest.warns(UserWarning, match="different models .*'other'.* no model_id"):
        total, diff = vec + other, vec - other
    a, b = vec.to_numpy(), other.to_numpy()
    assert total.layers == diff.layers == [2, 5, 7, 9]
    assert np.array_equal(total.to_numpy()[2], a[2])
    assert np.array_equal(total.to_numpy()[9], b[9])
    assert np.array_equal(diff.to_numpy()[9], -b[9])
    assert np.array_equal(diff.to_numpy()[5], a[5] - b[5])
    assert total.model_id is None  # operands disagree
    assert total.metadata == {"hook_point": "residuals"}  # only entries both agree on
    with pytest.warns(UserWarning, match="different models"):
        assert _bits(sum([vec, other])) == _bits(vec + other)
    with warnings.catch_warnings():  # one model, or an unknown one: no warning
        warnings.simplefilter("error")
        assert (vec + SteeringVector(_dirs([2]))).model_id is None
        assert (vec - vec * 0.5).model_id == vec.model_id


def test_arithmetic_errors(vec: SteeringVector) -> None:
    with pytest.raises(ZeroDivisionError, match="zero"):
        vec / 0
    with pytest.raises(ZeroDivisionError):
        vec / 0.0
    with pytest.raises(ValueError, match="hidden size"):
        vec + SteeringVector(_dirs([2], d=D + 1))
    with pytest.raises(ValueError, match="nan"):
        vec * math.nan
    with pytest.raises(TypeError):
        vec + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        vec * "2"  # type: ignore[operator]


def test_scalar_ops_keep_provenance(vec: SteeringVector) -> None:
    scaled = vec * 3
    assert (scaled.model_id, scaled.method, scaled.num_pairs) == (
        "mlx-community/Tiny-4bit",
        "mean_diff",
        12,
    )
    assert scaled.metadata == vec.metadata and scaled.metadata is not vec.metadata


def test_select_normalized(vec: SteeringVector) -> None:
    sub = vec.select([7, 2])
    assert sub.layers == [2, 7]
    assert _bits(sub)[7] == _bits(vec)[7]
    with pytest.raises(ValueError, match=r"layers \[3\] are not in this vector"):
        vec.select([2, 3])
    unit = vec.normalized()
    assert all(n == pytest.approx(1.0, abs=1e-6) for n in unit.norms.values())
    with pytest.raises(ValueError, match="layer 1: cannot normalise a zero"):
        SteeringVector({1: np.zeros(4)}).normalized()


def test_check_compatible(vec: SteeringVector) -> None:
    vec.check_compatible(D)
    vec.check_compatible(D, num_layers=8)
    with pytest.raises(
        ValueError, match=rf"hidden size {D} does not match the model's hidden size 32"
    ):
        vec.check_compatible(32)
    with pytest.raises(ValueError, match=r"layers \[7\] are out of range .* 7 layers .*0\.\.6"):
        vec.check_compatible(D, num_layers=7)


# -- safetensors ----------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(vec: SteeringVector, tmp_path: Path) -> None:
    path = vec.save(tmp_path / "v.safetensors")
    _assert_same(vec, SteeringVector.load(path))
    assert _listing(tmp_path) == ["v.safetensors"]


def test_saved_file_layout(vec: SteeringVector, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    path = vec.save(tmp_path / "v.safetensors")
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == ["residuals_2", "residuals_5", "residuals_7"]
        assert f.get_tensor("residuals_5").dtype == np.float32
        assert f.get_tensor("residuals_5").shape == (D,)
        meta = f.metadata()
    assert set(meta) == {"mlux"}
    info = json.loads(meta["mlux"])
    assert info["layers"] == [2, 5, 7] and info["hidden_size"] == D
    assert info["model_id"] == vec.model_id and info["num_pairs"] == 12
    assert info["norms"]["5"] == pytest.approx(vec.norms[5])
    assert read_summary(path) == info


def test_load_checks_hidden_size(vec: SteeringVector, tmp_path: Path) -> None:
    path = vec.save(tmp_path / "v.safetensors")
    assert SteeringVector.load(path, hidden_size=D).layers == [2, 5, 7]
    with pytest.raises(
        ValueError, match=rf"hidden size {D} does not match the model's hidden size 64"
    ):
        SteeringVector.load(path, hidden_size=64)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no steering vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SteeringVector.load(junk)

    arrays = {"residuals_1": mx.zeros((4,))}
    bad_json = tmp_path / "bad_json.safetensors"
    mx.save_safetensors(str(bad_json), arrays, metadata={"mlux": "{not json"})
    with pytest.raises(ValueError, match="mlux metadata is not valid JSON"):
        SteeringVector.load(bad_json)
    not_ours = tmp_path / "not_ours.safetensors"
    mx.save_safetensors(str(not_ours), arrays, metadata={"mlux": json.dumps({"x": 1})})
    with pytest.raises(ValueError, match="not a steering-vector header"):
        SteeringVector.load(not_ours)
    foreign = tmp_path / "weights.safetensors"
    mx.save_safetensors(str(foreign), {"model.layers.0.mlp.weight": mx.zeros((4, 4))})
    with pytest.raises(
        ValueError, match=re.escape("unexpected tensor 'model.layers.0.mlp.weight'")
    ):
        SteeringVector.load(foreign)


def test_load_newer_format_or_mismatched_header_fails(vec: SteeringVector, tmp_path: Path) -> None:
    header = read_summary(vec.save(tmp_path / "original.safetensors"))
    for change, message in [
        ({"format_version": 99}, "unsupported format_version 99"),
        ({"layers": [1, 2]}, r"metadata lists layers \[1, 2\]"),
        ({"hidden_size": 3}, "metadata says hidden size 3"),
    ]:
        path = tmp_path / "v.safetensors"
        arrays = {f"residuals_{k}": v for k, v in vec.directions.items()}
        mx.save_safetensors(str(path), arrays, metadata={"mlux": json.dumps({**header, **change})})
        with pytest.raises(ValueError, match=message):
            SteeringVector.load(path)


@pytest.mark.parametrize("prefix", ["residuals_", "direction."])
def test_load_bare_tensors_without_metadata(prefix: str, tmp_path: Path) -> None:
    raw = _dirs([3, 4])
    path = tmp_path / "bare.safetensors"
    mx.save_safetensors(str(path), {f"{prefix}{k}": mx.array(v) for k, v in raw.items()})
    v = SteeringVector.load(path)
    assert v.layers == [3, 4] and v.method == "unknown" and v.model_id is None
    assert _bits(v) == {k: a.tobytes() for k, a in raw.items()}
    assert read_summary(path)["layers"] == [3, 4] and read_summary(path)["hidden_size"] == D


def test_save_rejects_unserialisable_metadata(tmp_path: Path) -> None:
    v = SteeringVector({1: [1.0]}, metadata={"when": object()})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        v.save(tmp_path / "v.safetensors")
    assert _listing(tmp_path) == []


# -- atomic writes --------------------------------------------------------------------------------


def test_save_failure_mid_write_keeps_previous_file(
    vec: SteeringVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vec.save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def broken_writer(fh, arrays, metadata=None):  # type: ignore[no-untyped-def]
        fh.write(b"\x00" * 100)  # a partial file, then the "disk" fails
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        (vec * 5).save(path)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["v.safetensors"]  # temp file removed


def test_save_failure_at_fsync_keeps_previous_file(
    vec: SteeringVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vec.save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        (vec * 5).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["v.safetensors"]
    _assert_same(vec, SteeringVector.load(path))


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        SteeringVector({1: [1.0]}).save(tmp_path / "new.safetensors")
    assert _listing(tmp_path) == []


def test_save_into_missing_directory(vec: SteeringVector, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vec.save(tmp_path / "nope" / "v.safetensors")


# -- VectorLibrary --------------------------------------------------------------------------------


def test_library_save_list_load_delete(vec: SteeringVector, tmp_path: Path) -> None:
    lib = VectorLibrary(tmp_path / "lib")
    assert lib.list() == []
    lib.save("happy-v1.0", vec)
    lib.save("calm", SteeringVector(_dirs([1], seed=2)))
    assert lib.path("calm") == tmp_path / "lib" / "calm.safetensors"
    assert "calm" in lib and "nope" not in lib and "../x" not in lib

    listing = lib.list()
    assert [e["name"] for e in listing] == ["calm", "happy-v1.0"]
    happy = listing[1]
    assert happy["model_id"] == vec.model_id and happy["layers"] == [2, 5, 7]
    assert happy["hidden_size"] == D and happy["num_pairs"] == 12 and happy["method"] == "mean_diff"
    assert happy["norms"] == pytest.approx(vec.norms) and happy["created"] == vec.created

    _assert_same(vec, lib.load("happy-v1.0"))
    with pytest.raises(ValueError, match="hidden size"):
        lib.load("happy-v1.0", hidden_size=D + 1)
    lib.delete("happy-v1.0")
    assert [e["name"] for e in lib.list()] == ["calm"]
    with pytest.raises(FileNotFoundError, match=re.escape("no vector named 'happy-v1.0'")):
        lib.load("happy-v1.0")
    with pytest.raises(FileNotFoundError):
        lib.delete("happy-v1.0")


def test_library_lists_unreadable_files_with_error(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"xx")
    (tmp_path / ".tmpfile.safetensors").write_bytes(b"xx")  # never a legal name: skipped
    listing = VectorLibrary(tmp_path).list()
    assert [e["name"] for e in listing] == ["broken"]
    assert "not a readable safetensors file" in listing[0]["error"]


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", "a\\b", ".hidden", "..", "", "x" * 65, "sp ace", "é", None, 3]
)
def test_library_rejects_bad_names(name: object, vec: SteeringVector, tmp_path: Path) -> None:
    lib = VectorLibrary(tmp_path / "lib")
    for call in (lambda: lib.save(name, vec), lambda: lib.load(name), lambda: lib.path(name)):
        with pytest.raises(ValueError, match="vector names must be 1-64 characters"):
            call()  # type: ignore[arg-type]
    assert not (tmp_path / "evil.safetensors").exists()
    assert not (tmp_path / "lib").exists()


def test_library_accepts_edge_names(vec: SteeringVector, tmp_path: Path) -> None:
    lib = VectorLibrary(tmp_path)
    for name in ["a", "x" * 64, "A.b_c-9", "a..b"]:
        lib.save(name, vec)
        assert lib.load(name).layers == vec.layers


@pytest.mark.parametrize("hard_links", [True, False])
def test_library_create_is_exclusive_under_concurrency(
    hard_links: bool, vec: SteeringVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 threads save under one new name with overwrite=False: one wins, 7 get
    FileExistsError, and the file is the winner's, whole (also without hard links)."""
    if not hard_links:
        def no_link(src: str, dst: str) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    lib = VectorLibrary(tmp_path)
    barrier, results = threading.Barrier(8), []

    def create(i: int) -> None:
        barrier.wait()
        try:
            lib.save("same", vec * (i + 1), overwrite=False)
            results.append(i)
        except FileExistsError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    (winner,) = [r for r in results if isinstance(r, int)]
    assert results.count("a vector named 'same' exists in the library") == 7
    assert _bits(lib.load("same")) == _bits(vec * (winner + 1))
    assert _listing(tmp_path) == ["same.safetensors"]  # no temp file left behind
    lib.save("same", vec)  # overwrite=True (the default) replaces it
    assert _bits(lib.load("same")) == _bits(vec)


def test_library_never_touches_a_folder(vec: SteeringVector, tmp_path: Path) -> None:
    (tmp_path / "adir.safetensors").mkdir()
    lib = VectorLibrary(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'adir'.*adir\.safetensors is a folder"):
        lib.delete("adir")
    for overwrite in (True, False):
        with pytest.raises(IsADirectoryError, match="is a folder, not a vector file"):
            lib.save("adir", vec, overwrite=overwrite)
    with pytest.raises(FileNotFoundError):
        lib.load("adir")
    assert lib.list() == [] and (tmp_path / "adir.safetensors").is_dir()


def test_library_lists_damaged_files_as_errors_naming_no_folder(
    vec: SteeringVector, tmp_path: Path
) -> None:
    lib = VectorLibrary(tmp_path / "private" / "lib")
    data = lib.save("good", vec).read_bytes()
    lib.path("cut").write_bytes(data[:-10])  # the header is whole, the data is not
    lib.path("junk").write_bytes(b"xx")
    mx.save_safetensors(str(lib.path("huge")), {"residuals_1": mx.full((D,), 3e38)})
    mx.save_safetensors(str(lib.path("bare")), {"direction.3": mx.ones((D,))})
    forged = read_summary(lib.path("good"))
    forged["norms"]["5"] = math.inf
    arrays = {f"residuals_{k}": d for k, d in vec.directions.items()}
    mx.save_safetensors(str(lib.path("forged")), arrays, metadata={"mlux": json.dumps(forged)})

    listing = {e["name"]: e for e in lib.list()}
    json.dumps(listing, allow_nan=False)  # strict JSON: no Infinity anywhere
    assert sorted(listing) == ["bare", "cut", "forged", "good", "huge", "junk"]
    assert "error" not in listing["good"] and listing["bare"]["norms"] == {3: pytest.approx(4.0)}
    assert "truncated" in listing["cut"]["error"]
    assert "norm overflows float32" in listing["huge"]["error"]
    assert "not all finite" in listing["forged"]["error"]
    messages = [e["error"] for e in listing.values() if "error" in e]
    for name in ("cut", "junk", "huge", "missing"):
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            lib.load(name)
        messages.append(str(info.value))
    assert len(messages) == 8 and all(str(tmp_path) not in m for m in messages), messages
    assert messages[0].startswith("cut.safetensors is truncated")
