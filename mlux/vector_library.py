"""A directory of named steering vectors, ``<root>/<name>.safetensors``.

Names are checked against a strict pattern before touching the file system, so a name coming
from a web form or an API request can never escape ``root``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mlux.vectors import SteeringVector, read_summary

__all__ = ["NAME_RULE", "VectorLibrary", "validate_name"]

NAME_RULE = (
    "vector names must be 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-' "
    "and must not start with '.'"
)
# No '/' or '\\' and no leading dot: rules out path traversal ('..'), hidden and temp files.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_SUFFIX = ".safetensors"
_SUMMARY_KEYS = (
    "model_id",
    "method",
    "num_pairs",
    "hidden_size",
    "layers",
    "norms",
    "created",
    "version",
)


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

    def save(self, name: str, vector: SteeringVector) -> Path:
        """Store ``vector`` under ``name``, atomically replacing any vector of that name."""
        path = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        return vector.save(path)

    def load(self, name: str, *, hidden_size: int | None = None) -> SteeringVector:
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no vector named {name!r} in {self.root}")
        return SteeringVector.load(path, hidden_size=hidden_size)

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise FileNotFoundError(f"no vector named {name!r} in {self.root}") from None

    def list(self) -> list[dict[str, Any]]:
        """One dict per stored vector, sorted by name: ``name`` plus summary metadata
        (model_id, method, num_pairs, hidden_size, layers, norms, created, version).

        Reads only file headers. A file that cannot be read is listed with an ``error`` entry
        rather than hiding it or failing the whole listing.
        """
        if not self.root.is_dir():
            return []
        entries: list[dict[str, Any]] = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            name = path.name[: -len(_SUFFIX)]
            if _NAME.fullmatch(name) is None or not path.is_file():
                continue  # temp files and names this library could never have written
            try:
                info = read_summary(path)
            except (OSError, ValueError) as exc:
                entries.append({"name": name, "error": str(exc)})
                continue
            entry: dict[str, Any] = {"name": name}
            entry.update({key: info.get(key) for key in _SUMMARY_KEYS})
            if isinstance(entry["norms"], dict):  # JSON keys are strings; match .norms
                entry["norms"] = {int(k): v for k, v in entry["norms"].items()}
            entries.append(entry)
        return entries
