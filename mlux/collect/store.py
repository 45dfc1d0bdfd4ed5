"""Stream collected activations from shards: one shard in memory at a time, shuffled in a
bounded buffer, so training and evaluation never hold a whole data set."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from mlux.atomic import PathLike

from .shards import read_shard_tensor, shard_shape, verify_shard

__all__ = ["ActivationStore"]


class ActivationStore:
    """The rows of one tensor (`key`, e.g. `last`) across a list of shard files.

    With `expected` (per path: bytes and sha256 as recorded at write time, either may be None)
    sizes are checked at once and each shard's checksum on its first read; every shard's rows are
    checked for NaN/inf on first read. Errors name the shard.
    """

    def __init__(self, paths: Sequence[PathLike], key: str = "last", *,
                 expected: Optional[Sequence[tuple[Optional[int], Optional[str]]]] = None):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no shards to read: the collection has none for this hook point "
                             "(did `mlux collect` finish?)")
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard files missing: {', '.join(missing[:3])}"
                                    + (" ..." if len(missing) > 3 else "")
                                    + "; rerun `mlux collect` with the same config to redo them")
        self.key = key
        self.expected = list(expected) if expected is not None else [(None, None)] * len(paths)
        for p, (size, _) in zip(self.paths, self.expected, strict=True):
            verify_shard(p, size)
        self._checked: set[int] = set()

    @property
    def num_rows(self) -> int:
        return sum(shard_shape(p, self.key)[0] for p in self.paths)

    @property
    def dim(self) -> int:
        return shard_shape(self.paths[0], self.key)[-1]

    def read(self, i: int) -> np.ndarray:
        path = self.paths[i]
        if i not in self._checked:
            verify_shard(path, *self.expected[i])
        x = read_shard_tensor(path, self.key)
        if x.ndim != 2:
            raise ValueError(f"{path}: tensor {self.key!r} has shape {x.shape}, "
                             "expected (rows, hidden)")
        if i not in self._checked:
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if len(bad):
                raise ValueError(
                    f"shard {path}: {len(bad)} of {len(x)} rows of {self.key!r} hold NaN or inf "
                    f"(rows {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}); "
                    "the model overflowed (collect with model.dtype and "
                    "output.activation_dtype float32) or the file was damaged")
            self._checked.add(i)
        return x.astype(np.float32, copy=False)

    def iter_shards(self, order: Optional[Sequence[int]] = None) -> Iterator[np.ndarray]:
        for i in range(len(self.paths)) if order is None else order:
            yield self.read(i)

    def iter_sample(self, max_rows: int, batch_size: int, *, seed: int = 0
                    ) -> Iterator[np.ndarray]:
        """Batches of `max_rows` rows drawn uniformly (seeded, without replacement) from all
        shards, each shard read once; every row, in order, when there are no more than that."""
        sizes = [shard_shape(p, self.key)[0] for p in self.paths]
        total = sum(sizes)
        pick = (None if total <= max_rows else
                np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False)))
        pending, starts = np.zeros((0, 0), np.float32), np.cumsum([0] + sizes)
        for i, shard in enumerate(self.iter_shards()):
            if pick is not None:
                lo, hi = np.searchsorted(pick, starts[i:i + 2])
                shard = shard[pick[lo:hi] - starts[i]]
            pending = np.concatenate([pending, shard]) if len(pending) else shard
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                pending = pending[batch_size:]
        if len(pending):
            yield pending

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
