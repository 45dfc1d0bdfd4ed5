"""A directory of named steering vectors, ``<root>/<name>.safetensors``.

Names are checked against a strict pattern before touching the file system, so a name coming
from a web form or an API request can never escape ``root``. Error messages name the file, not
the folder it is in (they reach web pages). ``save(..., overwrite=False)`` is atomic and
exclusive: of many concurrent saves under one new name exactly one wins, the others get
``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

from mlux.vectors import SteeringVector

__all__ = ["NAME_RULE", "VectorLibrary", "validate_name"]

NAME_RULE = (
    "vector names must be 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-' "
    "and must not start with '.'"
)
# No '/' or '\\' and no leading dot: rules out path traversal ('..'), hidden and temp files.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_SUFFIX = ".safetensors"
_SUMMARY_KEYS = ("model_id", "method", "num_pairs", "hidden_size", "layers", "norms", "created",
                 "version")
_NO_LINKS_LOCK = threading.Lock()  # exclusive create where the file system has no hard links


def validate_name(name: object) -> str:
    """Return ``name`` if it is a legal vector name, else raise ``ValueError`` stating the rule."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(f"invalid vector name {name!r}: {NAME_RULE}")
    return name


class VectorLibrary:
    """Named steering vectors stored as safetensors files in one directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}{_SUFFIX}"

    def __contains__(self, name: object) -> bool:
        try:
            return self.path(validate_name(name)).is_file()
        except ValueError:
            return False

    def save(self, name: str, vector: SteeringVector, *, overwrite: bool = True) -> Path:
        """Store ``vector`` under ``name``. ``overwrite``: atomically replace any vector of that
        name; else create it only if the name is free (``FileExistsError`` if not), atomically
        too: readers never see a partial file, and of concurrent creators exactly one wins.
        ``IsADirectoryError`` if something that is not a file holds the name."""
        path = self.path(name)
        if path.exists() and not path.is_file():
            raise IsADirectoryError(f"{path.name} in the vector library is a folder, not a "
                                    "vector file; pick another name")
        with self._errors():
            self.root.mkdir(parents=True, exist_ok=True)
            if overwrite:
                return vector.save(path)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
            try:
                vector.save(tmp)
                _link_new(tmp, path, name)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def load(self, name: str, *, hidden_size: int | None = None) -> SteeringVector:
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no vector named {name!r} in the library")
        with self._errors():
            return SteeringVector.load(path, hidden_size=hidden_size)

    def delete(self, name: str) -> None:
        """Remove the vector file ``name``; ``FileNotFoundError`` if there is none (also when a
        folder has that name: only vector files are ever deleted)."""
        path = self.path(name)
        folder = f" ({path.name} is a folder, not a vector file)" if path.is_dir() else ""
        with self._errors():
            try:
                if folder:
                    raise FileNotFoundError
                path.unlink()
            except FileNotFoundError:
                raise FileNotFoundError(f"no vector named {name!r} in the library{folder}"
                                        ) from None

    def list(self) -> list[dict[str, Any]]:
        """One dict per stored vector, sorted by name: ``name`` plus summary metadata
        (model_id, method, num_pairs, hidden_size, layers, norms, created, version).

        Each file is checked by the one validator that loading uses (``mlux.vector_check``
        through ``SteeringVector.load``), so a file listed as fine loads. A file that cannot
        be read is listed with an ``error`` entry (naming no folder) rather than hiding it or
        failing the list.
        """
        if not self.root.is_dir():
            return []
        entries: list[dict[str, Any]] = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            name = path.name[: -len(_SUFFIX)]
            if _NAME.fullmatch(name) is None or not path.is_file():
                continue  # temp files and names this library could never have written
            try:
                with self._errors():
                    vector = SteeringVector.load(path)
            except (OSError, ValueError) as exc:
                entries.append({"name": name, "error": str(exc)})
                continue
            entries.append({"name": name, **{key: getattr(vector, key) for key in _SUMMARY_KEYS}})
        return entries

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Re-raise OSError / ValueError with the library's folder cut from the message."""
        try:
            yield
        except (OSError, ValueError) as exc:
            root = str(self.root)
            text = str(exc)
            if len(root) > 1:
                text = text.replace(root + os.sep, "").replace(root, "the vector library")
            if text == str(exc):
                raise
            try:
                clean = type(exc)(text)
            except Exception:  # an exception type with an unusual constructor
                clean = (ValueError if isinstance(exc, ValueError) else OSError)(text)
            raise clean from exc


def _link_new(tmp: Path, path: Path, name: str) -> None:
    """Give the complete file `tmp` the name `path` only if that name is free: a hard link
    fails atomically when it exists. File systems without hard links fall back to a check
    and a rename under a lock (exclusive within this process only)."""
    taken = FileExistsError(f"a vector named {name!r} exists in the library")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise taken from None
    except OSError:
        with _NO_LINKS_LOCK:
            if path.exists():
                raise taken from None
            os.replace(tmp, path)
