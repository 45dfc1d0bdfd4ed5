"""One chunk of a collection: running its prompts (generation, then capture), packing its
activations into shard tensors, and the run header the manifest keeps. Shared by the
single-process and the data-parallel collection."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from mlux.atomic import atomic_write_bytes
from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.untrusted import short

from .capture import BatchActivations, capture_batch
from .data import category_slug
from .fingerprint import model_fingerprint, run_settings
from .lock import LOCK_NAME, folder_lock, remove_orphans
from .manifest import MANIFEST_NAME, Manifest
from .plan import CollectionPlan
from .run_config import CollectConfig

__all__ = ["OWN_FILES", "SUBFOLDERS", "CollectionResult", "chunk_tensors", "claimed_dir",
           "prepare_dir", "run_chunk", "run_header"]

_PROBE = ".mlux-write-test"
OWN_FILES = (MANIFEST_NAME, _PROBE)  # what mlux writes at a result folder's top level
SUBFOLDERS = ("activations", "generations")  # mlux's own: all it holds is mlux's


@dataclass(frozen=True)
class CollectionResult:
    result_dir: Path
    plan: CollectionPlan
    manifest: Optional[Manifest]  # None for a dry run, and on ranks other than 0
    chunks_written: int
    chunks_skipped: int


@contextlib.contextmanager
def claimed_dir(result_dir: Path, *, force: bool, echo: Callable[[str], None]) -> Iterator[None]:
    """The result folder checked (`prepare_dir`), locked for this run, and cleared of the temp
    files mlux's own writes left there when a run was killed (never anyone else's; `sae/` has
    its own lock, so it is not searched)."""
    prepare_dir(result_dir, force=force)
    with folder_lock(result_dir, "collect", echo=echo):
        remove_orphans(result_dir, SUBFOLDERS, targets=OWN_FILES)
        yield


def prepare_dir(result_dir: Path, *, force: bool = False) -> None:
    """Fail before any work if the output directory is unfit (the file-system root, a file, a
    dangling or looping symlink, a non-empty folder that holds no collection unless `force`)
    or cannot be created or written."""
    where = f"output.result_dir {result_dir}"
    try:
        resolved = result_dir.resolve()
    except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError on a symlink loop
        resolved = None
    if resolved is None or (result_dir.is_symlink() and not result_dir.exists()):
        raise ValueError(f"{where} is a symlink that leads nowhere (a loop or a missing target)")
    if resolved == Path(resolved.anchor):
        raise ValueError(f"{where} is the file-system root; give the collection a folder of "
                         "its own")
    if result_dir.exists() and not result_dir.is_dir():
        raise ValueError(f"{where} is a file, not a folder")
    if result_dir.is_dir() and not force and not (result_dir / MANIFEST_NAME).is_file():
        others = sorted(p.name for p in result_dir.iterdir() if not _ours(p.name))
        if others:
            raise ValueError(f"{where} is not empty ({short(others[:3])}"
                             f"{' ...' if len(others) > 3 else ''}) and holds no mlux "
                             f"{MANIFEST_NAME}; give a new or empty folder, or use it anyway with "
                             "--force (Python: collect(..., force=True))")
    try:
        result_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_bytes(result_dir / _PROBE, b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno or errno.EIO, f"output.result_dir {result_dir} is not writable: "
                                            f"{e.strerror or e}") from None


def _ours(name: str) -> bool:
    """Files mlux itself leaves in a result folder before its manifest exists."""
    return name in (LOCK_NAME, _PROBE, *SUBFOLDERS) or (
        name.startswith((f".{MANIFEST_NAME}.", f".{_PROBE}.")) and name.endswith(".tmp"))


def chunk_tensors(acts: dict[str, list[np.ndarray]], start: int, dtype: str
                  ) -> dict[str, np.ndarray]:
    n = len(next(iter(acts.values())))
    out = {"sample_index": np.arange(start, start + n, dtype=np.int64)}
    for pos, rows in acts.items():
        if pos in ("last", "mean"):
            out[pos] = np.stack(rows).astype(dtype)
        else:
            out[pos] = np.concatenate(rows).astype(dtype)
            out[f"{pos}_offsets"] = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    return out


def run_header(config: CollectConfig, hooked: HookedModel, hooks: list[str],
               prompts: dict[str, list[str]], lengths: dict[str, list[int]],
               source: Path) -> dict[str, Any]:
    settings = run_settings(config, hooks, prompts)
    return {
        "fingerprint": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "settings": settings,
        "model": {"name": config.model.name, "model_type": hooked.model_type,
                  "num_layers": hooked.num_layers, "hidden_size": hooked.hidden_size,
                  "dtype": str(hooked.dtype), "quantization": hooked.quantization,
                  "fingerprint": model_fingerprint(config.model.name, hooked)},
        "config": config.to_dict(),
        "data_source": str(source),
        "hook_points": hooks,
        "positions": list(config.inference.positions) if config.inference.save_activations
        else [],
        "activation_dtype": config.output.activation_dtype,
        "shard_size": config.output.shard_size,
        "categories": {c: {"dir": category_slug(c), "num_samples": len(p), "prompts": p,
                           "prompt_tokens": lengths[c]} for c, p in prompts.items()},
    }


def run_chunk(hooked: HookedModel, config: CollectConfig, hooks: list[str],
              rows: list[list[int]], prompts: list[str], start: int,
               bar: tqdm) -> tuple[BatchActivations, list[dict[str, Any]]]:
    inf = config.inference
    acts: BatchActivations = {h: {p: [] for p in inf.positions} for h in hooks}
    texts: list[dict[str, Any]] = []
    for b in range(0, len(rows), inf.batch_size):
        batch = rows[b:b + inf.batch_size]
        gen = (generate_batch(hooked, batch, max_tokens=inf.max_new_tokens) if inf.max_new_tokens
               else [[] for _ in batch])
        if inf.save_activations:
            for h, per in capture_batch(hooked, batch, gen, hooks, inf.positions).items():
                for p, values in per.items():
                    acts[h][p].extend(values)
        if inf.max_new_tokens:
            texts.extend({"index": start + b + i, "prompt": prompts[b + i], "tokens": g,
                          "completion": hooked.tokenizer.decode(g)} for i, g in enumerate(gen))
        bar.update(len(batch))
    return acts, texts
