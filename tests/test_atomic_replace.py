"""`mlux.atomic.atomic_write_dir` replacing a folder, a file or a link leaves nothing behind
(issue 25.3: a replaced file stayed as a hidden `.NAME.<hex>.old`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlux.atomic import atomic_write_dir


def _write(tmp: Path) -> None:
    (tmp / "new.txt").write_text("new")


@pytest.mark.parametrize("kind", ["folder", "file", "link to a folder", "link to a file",
                                  "dangling link", "nothing"])
def test_replacing_leaves_only_the_target(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    target = work / "out"
    if kind == "folder":
        target.mkdir()
        (target / "old.txt").write_text("old")
    elif kind == "file":
        target.write_text("old")
    elif kind == "link to a folder":
        target.symlink_to(elsewhere, target_is_directory=True)
    elif kind == "link to a file":
        target.symlink_to(elsewhere / "keep.txt")
    elif kind == "dangling link":
        target.symlink_to(tmp_path / "missing")
    atomic_write_dir(target, _write)
    assert [p.name for p in work.iterdir()] == ["out"]
    assert target.is_dir() and not target.is_symlink()
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    # a link is replaced, never what it points to
    assert (elsewhere / "keep.txt").read_text() == "keep"


def test_a_failed_replacement_keeps_the_old_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and target.read_text() == "old"
