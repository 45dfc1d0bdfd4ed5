"""Stream collected activations from shards: one shard in memory at a time, shuffled in a
bounded buffer, so training and evaluation never hold a whole data set."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from mlux.atomic import PathLike

from .shards import Manifest, read_shard_tensor, shard_shape

__all__ = ["ActivationStore"]


class ActivationStore:
    """The rows of one tensor (`key`, e.g. `last`) across a list of shard files."""

    def __init__(self, paths: Sequence[PathLike], key: str = "last"):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no shards to read: the collection has none for this hook point "
                             "(did `mlux collect` finish?)")
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard files missing: {', '.join(missing[:3])}"
                                    + (" ..." if len(missing) > 3 else ""))
        self.key = key

    @classmethod
    def from_result_dir(cls, result_dir: PathLike, hook: str, position: str = "last",
                        categories: Optional[Sequence[str]] = None) -> ActivationStore:
        manifest = Manifest.load(Path(result_dir))
        return cls(manifest.shard_paths(hook, position, categories), position)

    @property
    def num_rows(self) -> int:
        return sum(shard_shape(p, self.key)[0] for p in self.paths)

    @property
    def dim(self) -> int:
        return shard_shape(self.paths[0], self.key)[-1]

    def read(self, i: int) -> np.ndarray:
        x = read_shard_tensor(self.paths[i], self.key)
        if x.ndim != 2:
            raise ValueError(f"{self.paths[i]}: tensor {self.key!r} has shape {x.shape}, "
                             "expected (rows, hidden)")
        return x.astype(np.float32, copy=False)

    def iter_shards(self, order: Optional[Sequence[int]] = None) -> Iterator[np.ndarray]:
        for i in range(len(self.paths)) if order is None else order:
            yield self.read(i)

    def load_all(self) -> np.ndarray:
        """Every row at once; for small tensors (`last`, `mean`) of analysis-sized data sets."""
        return np.concatenate(list(self.iter_shards()), axis=0)

    def iter_batches(self, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0,
                     epochs: int = 1, max_rows: Optional[int] = None) -> Iterator[np.ndarray]:
        """Batches of rows; with `shuffle_buffer > 0` shard order and rows are shuffled within a
        buffer of that many rows (plus at most one shard being read). The last batch of the
        stream may be short; `max_rows` stops after that many rows."""
        rng = np.random.default_rng(seed)
        pending: list[np.ndarray] = []
        held, emitted = 0, 0
        for _ in range(epochs):
            order = rng.permutation(len(self.paths)) if shuffle_buffer else None
            for shard in self.iter_shards(order):
                pending.append(shard)
                held += len(shard)
                del shard  # drop the reference: memory is what the buffer holds, nothing more
                while held >= max(batch_size, shuffle_buffer):
                    buf = np.concatenate(pending)
                    if shuffle_buffer:
                        buf = buf[rng.permutation(len(buf))]
                    n_out = (len(buf) - shuffle_buffer // 2) // batch_size * batch_size
                    n_out = max(n_out, batch_size)
                    for start in range(0, n_out, batch_size):
                        if max_rows is not None and emitted >= max_rows:
                            return
                        yield buf[start:start + batch_size]
                        emitted += batch_size
                    pending, held = [buf[n_out:]], len(buf) - n_out
                    del buf
        rest = np.concatenate(pending) if pending else np.zeros((0, 0), np.float32)
        if shuffle_buffer:
            rest = rest[rng.permutation(len(rest))]
        for start in range(0, len(rest), batch_size):
            if max_rows is not None and emitted >= max_rows:
                return
            yield rest[start:start + batch_size]
            emitted += len(rest[start:start + batch_size])
