"""Atomic file writes: readers see either the previous file or the complete new one, never a mix.

Every writer builds the new content in a temp file in the target's own directory (so the final
``os.replace`` is a same-filesystem rename, which is atomic), fsyncs it, renames it over the
target and fsyncs the directory so the rename survives a crash. On any failure the temp file is
removed and the target is left exactly as it was.

``OSError``s are re-raised with the *target* path in the message (the temp name would only
confuse) and the original ``errno`` kept, so callers can still tell ENOSPC from EACCES; the
original error is chained as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "PathLike",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_json",
    "atomic_write_text",
]

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Atomically replace ``path`` with whatever ``write(tmp)`` produces; returns ``Path(path)``.

    ``write`` receives a not-yet-existing temp path next to ``path`` and must create that file
    itself (e.g. ``open(tmp, "xb")``, or hand it to a library writer) and close it. Exceptions
    from ``write`` propagate (``OSError``s re-raised naming ``path``) after the temp file is
    removed; ``path`` is only touched by the final rename.
    """
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        # Checked up front: otherwise the error would name the temp file, not the directory.
        exists = parent.exists()
        code = errno.ENOTDIR if exists else errno.ENOENT
        reason = "is not a directory" if exists else "does not exist"
        raise OSError(code, f"cannot write {target}: directory {parent} {reason}")
    # A dot name keeps the temp file out of listings and globs like "*.json".
    tmp = parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        write(tmp)
        if not tmp.is_file():
            raise OSError(errno.ENOENT, "the write callback did not create its temp file")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:  # also KeyboardInterrupt: never leave the temp file behind
        with contextlib.suppress(OSError):  # a failing cleanup must not mask the real error
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, target) from exc
        raise
    _fsync_dir(parent)
    return target


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Atomically replace ``path`` with ``data``; returns ``Path(path)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes, got {_type_name(data)}")

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:  # "x": never follow or reuse something already there
            fh.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` (no newline translation); returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs a str, got {_type_name(text)}")
    # Encode before touching the disk so an unencodable character leaves nothing behind.
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically replace ``path`` with ``obj`` as strict JSON plus a trailing newline.

    Raises ``ValueError`` (before writing anything) if ``obj`` holds something JSON cannot
    represent: a non-JSON type (the message names the type and where it sits), a non-finite
    float (strict JSON has no NaN/Infinity, and other parsers reject Python's extension), a
    non-scalar dict key, or a circular reference.
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = _find_problem(obj, "", set()) or str(exc)
        raise ValueError(f"cannot write {Path(path)} as JSON: {problem}") from exc
    return atomic_write_text(path, text + "\n")


def atomic_write_dir(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Replace the directory ``path`` with what ``write(tmp)`` puts into a new temp directory.

    Readers see the old directory or the complete new one, never a mix of their files. The old
    one (a folder, or a file or link of the same name) is renamed aside (``.<name>.<hex>.old``)
    just before the new one is renamed into place and removed after, leaving nothing behind; on
    an error it is put back. A crash between the two renames leaves the
    target missing and both hidden directories behind (to be removed as orphans).
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise OSError(errno.ENOENT, f"cannot write {target}: directory {target.parent} does "
                                    "not exist")
    token = secrets.token_hex(6)
    tmp = target.parent / f".{target.name}.{token}.tmp"
    old = target.parent / f".{target.name}.{token}.old"
    tmp.mkdir()
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        _fsync_dir(tmp)
        if os.path.lexists(target):  # a dangling link too: rename cannot replace it by a dir
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(old) and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.replace(old, target)
        if isinstance(exc, OSError):
            raise _naming(exc, target) from exc
        raise
    _fsync_dir(target.parent)
    _remove(old)
    return target


# -- helpers --------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    """Delete what was renamed aside: a folder, a file or a link (never what a link points to).
    Best effort: the new content is already in place, so a failure here is not the write's."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _fsync_file(path: Path) -> None:
    # Opened for writing because Windows cannot flush a read-only handle.
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    # Persists the rename itself; not every platform lets a directory be opened or fsynced, and
    # the new file is already in place, so failing here must not report the write as failed.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _naming(exc: OSError, target: Path) -> OSError:
    """A copy of ``exc`` whose message names ``target`` and which keeps its errno and type."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = f"cannot write {target}: {reason}"
    if exc.errno is not None:
        return OSError(exc.errno, message)  # OSError maps errno to its subclass (EACCES -> ...)
    try:
        return type(exc)(message)
    except TypeError:  # a subclass with an unusual constructor
        return OSError(message)


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _find_problem(value: Any, where: str, active: set[int]) -> str | None:
    """Describe the first part of ``value`` that strict ``json.dumps`` rejects, or None.

    Mirrors the json module's rules: str/int/float/bool/None and subclasses of dict, list and
    tuple are accepted; ``active`` holds the containers on the current path to catch cycles.
    """
    at = where or "the top level"
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"value at {at} is {value!r}, and strict JSON has no NaN or Infinity"
    if not isinstance(value, (dict, list, tuple)):
        return f"value at {at} has type {_type_name(value)}, which is not JSON-serialisable"
    if id(value) in active:
        return f"value at {at} contains itself (circular reference)"
    active.add(id(value))
    try:
        if isinstance(value, dict):
            for key, item in value.items():
                if not (key is None or isinstance(key, (str, int, float))):
                    return (
                        f"dict at {at} has a key of type {_type_name(key)} ({key!r}); "
                        "JSON keys must be str, int, float, bool or None"
                    )
                if isinstance(key, float) and not math.isfinite(key):
                    return f"dict at {at} has the key {key!r}, and strict JSON has no NaN"
                found = _find_problem(item, f"{where}[{key!r}]", active)
                if found:
                    return found
        else:
            for index, item in enumerate(value):
                found = _find_problem(item, f"{where}[{index}]", active)
                if found:
                    return found
    finally:
        active.discard(id(value))
    return None
