"""On-disk layout of a collection: safetensors shards per category and hook point, plus a manifest.

    <result_dir>/manifest.json
    <result_dir>/activations/<category>/<hook>/shard_00000.safetensors
    <result_dir>/generations/<category>/shard_00000.json

A shard holds samples `[index * shard_size, ...)` of its category: one tensor per position
(`last`, `mean`: `(N, D)`; `all`, `generated`: `(tokens, D)` with `<pos>_offsets` `(N + 1,)`) and
`sample_index` `(N,)`. Every file is written atomically; the manifest lists a chunk only after all
of its files are on disk, so a listed chunk is complete and an unlisted one is redone.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from mlux.atomic import atomic_write_bytes, atomic_write_json

from .data import category_slug

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "read_shard_tensor",
    "shard_shape",
    "write_shard",
]

FORMAT = "mlux-activations"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def write_shard(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
                ) -> dict[str, Any]:
    """Atomically write one safetensors shard; return its manifest entry (shapes, dtypes, bytes)."""
    data = safetensors_bytes({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                             metadata=dict(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        hint = (" (disk full: free space and rerun; finished shards are kept and skipped)"
                if e.errno == errno.ENOSPC else "")
        raise OSError(e.errno, f"{e.strerror or e}{hint}") from None
    return {"bytes": len(data),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                        for k, v in tensors.items()}}


def read_shard_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor of a shard, read without loading the others."""
    with safe_open(str(path), framework="numpy") as f:
        if name not in f.keys():
            raise ValueError(f"shard {path} has no tensor {name!r} (has {', '.join(f.keys())})")
        return f.get_tensor(name)


def shard_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape of one tensor, from the header only."""
    with safe_open(str(path), framework="numpy") as f:
        if name not in f.keys():
            raise ValueError(f"shard {path} has no tensor {name!r} (has {', '.join(f.keys())})")
        return tuple(int(n) for n in f.get_slice(name).get_shape())


class Manifest:
    """The JSON index of a result directory: what was collected, from what, and what is done."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = Path(root)
        self.data = data

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a collection result: no {MANIFEST_NAME} "
                                    "(run `mlux collect` first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it to start over") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an mlux activation manifest")
        if data.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {data['version']}; this mlux reads "
                             f"up to {FORMAT_VERSION}")
        return cls(Path(root), data)

    @classmethod
    def open(cls, root: Path, header: dict[str, Any]) -> Manifest:
        """Resume the manifest in `root` if it was made by the same run, else start a new one."""
        if (Path(root) / MANIFEST_NAME).exists():
            found = cls.load(root)
            if found.data.get("fingerprint") != header["fingerprint"]:
                raise ValueError(
                    f"{root} holds a collection made with a different model, layers, positions "
                    "or prompts; choose another output.result_dir or delete the old one")
            return found
        data = {"format": FORMAT, "version": FORMAT_VERSION, **header, "chunks": {},
                "complete": False}
        return cls(Path(root), data)

    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, self.data)

    # -- facts --------------------------------------------------------------------------------
    @property
    def hook_points(self) -> list[str]:
        return list(self.data["hook_points"])

    @property
    def positions(self) -> list[str]:
        return list(self.data["positions"])

    @property
    def categories(self) -> list[str]:
        return list(self.data["categories"])

    @property
    def model_id(self) -> Optional[str]:
        return self.data["model"].get("name")

    @property
    def hidden_size(self) -> int:
        return int(self.data["model"]["hidden_size"])

    # -- chunks -------------------------------------------------------------------------------
    @staticmethod
    def shard_relpath(category: str, hook: str, index: int) -> str:
        return f"activations/{category_slug(category)}/{hook}/shard_{index:05d}.safetensors"

    @staticmethod
    def generations_relpath(category: str, index: int) -> str:
        return f"generations/{category_slug(category)}/shard_{index:05d}.json"

    @staticmethod
    def _key(category: str, index: int) -> str:
        return f"{category_slug(category)}/{index:05d}"

    def chunk_done(self, category: str, index: int) -> bool:
        """Listed, and every file it lists is on disk with its recorded size."""
        entry = self.data["chunks"].get(self._key(category, index))
        if entry is None:
            return False
        files = [(s["path"], s["bytes"]) for s in entry["shards"].values()]
        if entry.get("generations"):
            files.append((entry["generations"], None))
        for rel, size in files:
            p = self.root / rel
            if not p.is_file() or (size is not None and p.stat().st_size != size):
                return False
        return True

    def record_chunk(self, category: str, index: int, start: int, stop: int,
                     shards: Mapping[str, dict[str, Any]], generations: Optional[str]) -> None:
        self.data["chunks"][self._key(category, index)] = {
            "category": category, "index": index, "start": start, "stop": stop,
            "shards": dict(shards), "generations": generations}

    def chunks(self, categories: Optional[Iterable[str]] = None) -> list[dict[str, Any]]:
        wanted = set(self.categories if categories is None else categories)
        unknown = wanted - set(self.categories)
        if unknown:
            raise ValueError(f"categories {sorted(unknown)} were not collected; collected: "
                             f"{', '.join(self.categories)}")
        order = {c: i for i, c in enumerate(self.categories)}
        found = [c for c in self.data["chunks"].values() if c["category"] in wanted]
        return sorted(found, key=lambda c: (order[c["category"]], c["index"]))

    def shard_paths(self, hook: str, position: str,
                    categories: Optional[Iterable[str]] = None) -> list[Path]:
        """Every finished shard of `hook` holding `position`, in category and index order."""
        if hook not in self.hook_points:
            raise ValueError(f"hook point {hook!r} was not collected; collected: "
                             f"{', '.join(self.hook_points)}")
        if position not in self.positions:
            raise ValueError(f"position {position!r} was not collected; collected: "
                             f"{', '.join(self.positions)}")
        return [self.root / c["shards"][hook]["path"] for c in self.chunks(categories)
                if hook in c["shards"]]
