"""Tests for mlux.atomic: atomic writes never leave a partial target or a temp file behind."""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlux import atomic
from mlux.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


class _Opaque:
    """Something json.dumps cannot encode."""


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    path = tmp_path / "out.json"
    path.write_text('{"old": true}\n')
    return path


# -- success --------------------------------------------------------------------------------------


def test_write_bytes_text_and_json(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert atomic_write_text(str(tmp_path / "t.txt"), "héllo\nwörld") == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_bytes() == "héllo\nwörld".encode()
    obj = {"name": "run", "scores": [1, 2.5, None], "ok": True, "nested": {"x": [1, {"y": 2}]}}
    atomic_write_json(tmp_path / "r.json", obj)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2) + "\n"
    atomic_write_json(tmp_path / "compact.json", obj, indent=None)
    assert (tmp_path / "compact.json").read_text() == json.dumps(obj) + "\n"
    assert _listing(tmp_path) == ["b.bin", "compact.json", "r.json", "t.txt"]


def test_replaces_existing_file(existing: Path) -> None:
    atomic_write_json(existing, {"new": 1})
    assert json.loads(existing.read_text()) == {"new": 1}
    assert _listing(existing.parent) == ["out.json"]


def test_write_callback_gets_fresh_temp_path_in_same_directory(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert not tmp.exists()
        tmp.write_text("payload")

    assert atomic_write(tmp_path / "x.txt", write) == tmp_path / "x.txt"
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.txt.") and not tmp.exists()
    assert (tmp_path / "x.txt").read_text() == "payload"


def test_wrong_argument_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="needs bytes, got str"):
        atomic_write_bytes(tmp_path / "b", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a str, got bytes"):
        atomic_write_text(tmp_path / "t", b"bytes")  # type: ignore[arg-type]
    assert _listing(tmp_path) == []


# -- failures keep the previous file and leave no temp file ---------------------------------------


def test_failure_mid_write_keeps_previous_file(existing: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(existing, write)
    assert info.value.errno == errno.ENOSPC
    assert str(existing) in str(info.value) and "No space left" in str(info.value)
    assert ".tmp" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert existing.read_text() == '{"old": true}\n'
    assert _listing(existing.parent) == ["out.json"]


def test_oserror_without_errno_still_names_path(existing: Path) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match=re.escape(f"cannot write {existing}: disk full")) as info:
        atomic_write(existing, write)
    assert info.value.errno is None
    assert _listing(existing.parent) == ["out.json"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_other_exceptions_propagate_unchanged(existing: Path, error: BaseException) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise error

    with pytest.raises(type(error)) as info:
        atomic_write(existing, write)
    assert info.value is error
    assert existing.read_text() == '{"old": true}\n'
    assert _listing(existing.parent) == ["out.json"]


def test_failure_at_fsync_keeps_previous_file(
    existing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match=re.escape(str(existing))) as info:
        atomic_write_text(existing, "new")
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert existing.read_text() == '{"old": true}\n'
    assert _listing(existing.parent) == ["out.json"]


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "new.json"))):
        atomic_write_json(tmp_path / "new.json", {"a": 1})
    assert _listing(tmp_path) == []


def test_callback_that_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="did not create its temp file"):
        atomic_write(tmp_path / "x", lambda tmp: None)
    assert _listing(tmp_path) == []


# -- directories that cannot be written -----------------------------------------------------------


def test_missing_parent_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.json"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        atomic_write_json(target, {"a": 1})
    assert str(target) in str(info.value) and info.value.errno == errno.ENOENT
    assert _listing(tmp_path) == []


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        atomic_write_text(tmp_path / "file" / "out.txt", "x")


def test_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match=re.escape(f"cannot write {tmp_path / 'out'}")):
        atomic_write_text(tmp_path / "out", "x")
    assert _listing(tmp_path) == ["out"] and _listing(tmp_path / "out") == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=re.escape(str(locked / "out.json"))) as info:
            atomic_write_json(locked / "out.json", {"a": 1})
        assert info.value.errno == errno.EACCES
        assert _listing(locked) == []
    finally:
        locked.chmod(0o700)


def test_unwritable_directory_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Works as root too: make opening the temp file fail the way a read-only directory does.
    def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(atomic, "open", denied, raising=False)
    target = tmp_path / "out.bin"
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(target, b"data")
    message = str(info.value)
    assert message == f"[Errno {errno.EACCES}] cannot write {target}: Permission denied"
    assert info.value.errno == errno.EACCES
    assert _listing(tmp_path) == []


# -- JSON that cannot be written ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": [1, _Opaque()]}, r"value at \['a'\]\[1\] has type .*_Opaque, which is not JSON"),
        ({"x": np.float32(1.5)}, r"value at \['x'\] has type numpy\.float32"),
        ({1, 2}, "value at the top level has type set"),
        ({"b": b"raw"}, r"value at \['b'\] has type bytes"),
        ({(1, 2): "v"}, r"dict at the top level has a key of type tuple \(\(1, 2\)\)"),
        ({"scores": [0.5, math.nan]}, r"value at \['scores'\]\[1\] is nan, .*no NaN"),
        ({"big": math.inf}, r"value at \['big'\] is inf"),
        ([-math.inf], r"value at \[0\] is -inf"),
        ({math.nan: 1}, "has the key nan"),
    ],
)
def test_json_rejects_what_it_cannot_represent(existing: Path, obj: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        atomic_write_json(existing, obj)
    assert str(existing) in str(info.value)
    assert existing.read_text() == '{"old": true}\n'
    assert _listing(existing.parent) == ["out.json"]


def test_json_rejects_circular_reference(tmp_path: Path) -> None:
    loop: dict[str, Any] = {"items": []}
    loop["items"].append(loop)
    with pytest.raises(ValueError, match=r"value at \['items'\]\[0\] contains itself"):
        atomic_write_json(tmp_path / "loop.json", loop)
    assert _listing(tmp_path) == []


def test_json_accepts_shared_non_circular_values(tmp_path: Path) -> None:
    shared = [1, 2]
    atomic_write_json(tmp_path / "s.json", {"a": shared, "b": shared, "f": np.float64(0.25)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": [1, 2], "b": [1, 2], "f": 0.25}
