"""Prompt data sets: JSONL, CSV or a folder of text files, grouped by category and balanced.

Folders: `<dir>/<category>.txt` holds one prompt per non-empty line, and `<dir>/<category>/`
holds one prompt per `*.txt` file. Files without categories put every prompt in category `all`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mlux.untrusted import short

from .run_config import DataSection

__all__ = [
    "DEFAULT_CATEGORY",
    "Dataset",
    "balance_categories",
    "category_slug",
    "load_dataset",
    "read_prompts",
    "resolve_data_path",
]

DEFAULT_CATEGORY = "all"


@dataclass(frozen=True)
class Dataset:
    """Prompts per category, in a fixed order (the order shards and manifests use)."""

    prompts: dict[str, list[str]]
    source: Path

    @property
    def categories(self) -> list[str]:
        return list(self.prompts)

    def __len__(self) -> int:
        return sum(len(v) for v in self.prompts.values())


def category_slug(name: str) -> str:
    """A file-system-safe directory name for a category (same name -> same slug)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "_"
    # A stable hash (not hash()) so that a resumed run finds the same directories.
    return slug if slug == name else f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def resolve_data_path(path: str, config_file: Optional[Path]) -> Path:
    """Relative paths are tried against the working directory, then the config file's folder
    and its parents (so `configs/data/x.jsonl` works from anywhere inside the project)."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p]
    if not p.is_absolute() and config_file is not None:
        folder = config_file.resolve().parent
        candidates += [d / p for d in (folder, *folder.parents)]
    for c in candidates:
        if c.exists():
            return c
    tried = " or ".join(str(c) for c in candidates[:2]) + (" or their parents"
                                                           if len(candidates) > 2 else "")
    raise FileNotFoundError(f"data.path {short(path)} does not exist (looked in {tried})")


def _add(out: dict[str, list[str]], category: str, text: str, where: str) -> None:
    if not text.strip():
        raise ValueError(f"{where}: empty prompt")
    out.setdefault(category, []).append(text)


def _read_rows(rows: Sequence[tuple[str, dict]], text_field: str, category_field: str
               ) -> dict[str, list[str]]:
    has_cat = [category_field in r for _, r in rows]
    if any(has_cat) and not all(has_cat):
        where = rows[has_cat.index(False)][0]
        raise ValueError(f"{where}: no {short(category_field)} field, but other rows have one")
    out: dict[str, list[str]] = {}
    for where, row in rows:
        if text_field not in row:
            fields = short(", ".join(row), 200)
            raise ValueError(f"{where}: no {short(text_field)} field (fields: {fields}); "
                             "set data.text_field")
        text, cat = row[text_field], row.get(category_field, DEFAULT_CATEGORY)
        if not isinstance(text, str) or not isinstance(cat, (str, int)):
            raise ValueError(f"{where}: {short(text_field)} must be a string and "
                             f"{short(category_field)} a string")
        _add(out, str(cat), text, where)
    return out


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: each line must be a JSON object")
        rows.append((f"{path}:{n}", row))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM is no field
        reader = csv.DictReader(fh)
        return [(f"{path}:{n}", {k: v for k, v in row.items() if k is not None and v is not None})
                for n, row in enumerate(reader, 2)]


def _folder(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in sorted(path.iterdir()):
        if entry.is_file() and entry.suffix == ".txt":
            for n, line in enumerate(entry.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    _add(out, entry.stem, line, f"{entry}:{n}")
        elif entry.is_dir():
            for f in sorted(f for f in entry.glob("*.txt") if f.is_file()):  # no FIFO: hangs
                _add(out, entry.name, f.read_text(encoding="utf-8").strip(), str(f))
    return out


def read_prompts(path: Path, *, text_field: str = "text", category_field: str = "category"
                 ) -> dict[str, list[str]]:
    """All prompts of a JSONL/CSV file or folder, by category, in file order."""
    if not path.is_dir() and not path.is_file():  # reading a FIFO or device would block
        raise ValueError(f"data.path {path} is not a regular file or folder (a pipe or "
                         "device?); give a .jsonl or .csv file or a folder of .txt files")
    try:
        if path.is_dir():
            out = _folder(path)
        elif path.suffix in (".jsonl", ".json"):
            out = _read_rows(_jsonl_rows(path), text_field, category_field)
        elif path.suffix == ".csv":
            out = _read_rows(_csv_rows(path), text_field, category_field)
        else:
            raise ValueError(f"data.path {path}: unsupported file type {short(path.suffix)}; "
                             "use a .jsonl or .csv file or a folder of .txt files")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.path {path}: not UTF-8 text ({e.reason})") from None
    if not out:
        raise ValueError(f"data.path {path} holds no prompts")
    return out


def balance_categories(prompts: dict[str, list[str]], strategy: str,
                       max_per_category: Optional[int] = None, seed: int = 0
                       ) -> dict[str, list[str]]:
    """Cap each category at `max_per_category`, then with `equalize` cut every category to the
    smallest one's size. Kept prompts are a seeded random subset in their original order."""
    limit = {c: len(p) if max_per_category is None else min(len(p), max_per_category)
             for c, p in prompts.items()}
    if strategy == "equalize":
        smallest = min(limit.values())
        limit = dict.fromkeys(limit, smallest)
    elif strategy != "use_all":
        raise ValueError(f"unknown category_balance_strategy {strategy!r}; use use_all or "
                         "equalize")
    out = {}
    for c, p in prompts.items():
        keep = sorted(random.Random(f"{seed}:{c}").sample(range(len(p)), limit[c]))
        out[c] = [p[i] for i in keep]
    return out


def load_dataset(section: DataSection, config_file: Optional[Path] = None) -> Dataset:
    """Read, filter by `categories` (empty = all) and balance the prompts of a config."""
    path = resolve_data_path(section.path, config_file)
    prompts = read_prompts(path, text_field=section.text_field,
                           category_field=section.category_field)
    if section.categories:
        unknown = [c for c in section.categories if c not in prompts]
        if unknown:
            raise ValueError(f"data.categories {unknown} not in {path}; available: "
                             f"{', '.join(prompts)}")
        prompts = {c: prompts[c] for c in section.categories}
    slugs = [category_slug(c) for c in prompts]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"categories {list(prompts)} collide as directory names")
    prompts = balance_categories(prompts, section.category_balance_strategy,
                                 section.max_samples_per_category, section.seed)
    return Dataset(prompts, path)
