"""The manifest of a result directory: what was collected, from which model, and which chunks are
done (with every shard's size and checksum).

    <result_dir>/manifest.json
    <result_dir>/activations/<category>/<hook>/shard_00000.safetensors
    <result_dir>/generations/<category>/shard_00000.json

Every file is written atomically; the manifest lists a chunk only after all of its files are on
disk, so a listed chunk is complete and an unlisted one is redone. Readers go through
`open_collection`, which refuses an incomplete collection unless asked to use what is there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from mlux.atomic import PathLike, atomic_write_json

from .data import category_slug
from .fingerprint import diff_model, diff_settings
from .run_config import SAESection, section
from .store import ActivationStore

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "load_activations",
           "open_collection"]

FORMAT = "mlux-activations"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"

# key -> type of the value, for the keys readers rely on (a hand-edit must not be a KeyError)
_TOP = {"hook_points": list, "positions": list, "categories": dict, "model": dict,
        "chunks": dict, "complete": bool}
_MODEL = {"name": str, "num_layers": int, "hidden_size": int}
_CHUNK = {"category": str, "index": int, "start": int, "stop": int, "shards": dict}
_SHARD = {"path": str, "bytes": int}


def _check_keys(path: Path, where: str, value: Any, keys: Mapping[str, type]) -> None:
    for key, kind in keys.items():
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"{path}: {where}key {key!r} is missing (the file was edited or "
                             f"truncated); delete {path.name} and rerun `mlux collect` to "
                             "rebuild it")
        if not isinstance(value[key], kind):
            raise ValueError(f"{path}: {where}key {key!r} should be a {kind.__name__}, got "
                             f"{type(value[key]).__name__}")


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
        if not isinstance(data.get("version"), int) or data["version"] > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {data.get('version')!r}; this mlux "
                             f"reads up to {FORMAT_VERSION}")
        _check_keys(path, "", data, _TOP)
        _check_keys(path, "model.", data["model"], _MODEL)
        for cat, entry in data["categories"].items():
            _check_keys(path, f"categories[{cat!r}].", entry, {"num_samples": int})
        for key, chunk in data["chunks"].items():
            _check_keys(path, f"chunks[{key!r}].", chunk, _CHUNK)
            for hook, shard in chunk["shards"].items():
                _check_keys(path, f"chunks[{key!r}].shards[{hook!r}].", shard, _SHARD)
        return cls(Path(root), data)

    @classmethod
    def open(cls, root: Path, header: dict[str, Any]) -> Manifest:
        """Resume the manifest in `root` if it was made by the same run, else start a new one."""
        if (Path(root) / MANIFEST_NAME).exists():
            found = cls.load(root)
            old = found.data.get("settings")
            if old is None:
                raise ValueError(f"{root} holds a collection from an older mlux (no recorded "
                                 "settings or model fingerprint), so a resume cannot be checked; "
                                 "choose another output.result_dir or delete the old one")
            model = diff_model(found.data["model"].get("fingerprint"),
                               header["model"]["fingerprint"])
            new = dict(header["settings"])
            if not model:  # the same weights under another path or name: the same model
                old = {k: v for k, v in old.items() if k != "model"}
                new.pop("model", None)
            changes = diff_settings(old, new) + model
            if changes:
                raise ValueError(f"{root} holds a collection made differently, so its shards "
                                 f"cannot be mixed with this run's: {'; '.join(changes)}. "
                                 "Choose another output.result_dir, or delete the old one")
            return found
        data = {"format": FORMAT, "version": FORMAT_VERSION, **header, "chunks": {},
                "complete": False}
        return cls(Path(root), data)

    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, self.data)

    def sae_settings(self) -> SAESection:
        """The `sae:` section of the config this collection was made with (the defaults when
        it had none): what `mlux train-sae` and `train_saes(result_dir)` train with."""
        raw = (self.data.get("config") or {}).get("sae")
        return SAESection() if raw is None else section("sae", raw)

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

    def samples(self, categories: Optional[Iterable[str]] = None) -> dict[str, tuple[int, int]]:
        """Per category: (prompts in finished chunks, prompts the collection asked for)."""
        cats = self.categories if categories is None else list(categories)
        done = dict.fromkeys(cats, 0)
        for c in self.chunks(cats):
            done[c["category"]] += c["stop"] - c["start"]
        return {c: (done[c], self.data["categories"][c]["num_samples"]) for c in cats}

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

    def shard_entries(self, hook: str, position: str,
                      categories: Optional[Iterable[str]] = None) -> list[dict[str, Any]]:
        """Manifest entries (path, bytes, sha256, tensors) of `hook`'s shards, in order."""
        if hook not in self.hook_points:
            raise ValueError(f"hook point {hook!r} was not collected; collected: "
                             f"{', '.join(self.hook_points)}")
        if position not in self.positions:
            raise ValueError(f"position {position!r} was not collected; collected: "
                             f"{', '.join(self.positions)}")
        return [c["shards"][hook] for c in self.chunks(categories) if hook in c["shards"]]

    def shard_paths(self, hook: str, position: str,
                    categories: Optional[Iterable[str]] = None) -> list[Path]:
        """Every finished shard of `hook` holding `position`, in category and index order."""
        return [self.root / s["path"] for s in self.shard_entries(hook, position, categories)]

    def store(self, hook: str, position: str = "last",
              categories: Optional[Iterable[str]] = None) -> ActivationStore:
        """The rows of `hook` at `position`; each shard's size and checksum (as recorded when it
        was written) are verified, and its rows checked for NaN/inf, on its first read."""
        shards = self.shard_entries(hook, position, categories)
        return ActivationStore([self.root / s["path"] for s in shards], position,
                               expected=[(s["bytes"], s.get("sha256")) for s in shards])


def open_collection(result_dir: Path, *, categories: Optional[Iterable[str]] = None,
                    allow_partial: bool = False,
                    echo: Callable[[str], None] = print) -> Manifest:
    """The manifest of a collection that readers may use: refused when some prompts of
    `categories` (default: all) were never collected, unless `allow_partial` (then the counts
    actually used are echoed)."""
    manifest = Manifest.load(Path(result_dir))
    counts = manifest.samples(categories)
    short = {c: n for c, n in counts.items() if n[0] < n[1]}
    if short:
        used = ", ".join(f"{c} {n[0]}/{n[1]}" for c, n in counts.items())
        if not allow_partial:
            raise ValueError(f"the collection in {result_dir} is incomplete ({used} prompts; "
                             "was `mlux collect` interrupted?): rerun it to finish, or pass "
                             "--allow-partial (allow_partial=True) to use what is there")
        echo(f"partial collection: using {used} prompts")
    return manifest


def load_activations(result_dir: PathLike, hook: str, position: str = "last",
                     categories: Optional[Iterable[str]] = None, *, allow_partial: bool = False,
                     echo: Callable[[str], None] = print) -> np.ndarray:
    """Every row of `hook` at `position` (`categories` in collection order), checked like
    `open_collection` and `Manifest.store` check them."""
    cats = list(categories) if categories is not None else None
    manifest = open_collection(Path(result_dir), categories=cats, allow_partial=allow_partial,
                               echo=echo)
    return manifest.store(hook, position, cats).load_all()
