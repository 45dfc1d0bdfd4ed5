"""Sharded models over `mx.distributed`: which layers a rank runs, and moving activations and
tokens between ranks so every rank sees the same results.

mlx-lm shards a model two ways (`mlx_lm.utils.sharded_load(path, pipeline_group, tensor_group)`):

- pipeline (`model.model.pipeline(group)`): each rank runs a contiguous run of blocks and keeps
  `None` in the slots of the others (rank 0 runs the *last* blocks). Activations of a block exist
  on its owner only; `Sharding.gather` sends them to every rank.
- tensor parallel (`model.shard(group)`): every rank runs every block on a slice of the heads and
  MLP columns; the residual stream is whole on every rank after the sharded projections'
  all-sum, so hooks and captures need nothing more.

Every collective here is called by every rank in the same order, as mx.distributed requires:
control flow in mlux's forward passes depends only on things all ranks share (the prompts, the
names asked for, the logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

__all__ = ["Sharding", "detect_sharding", "is_main_process", "rank", "world_size"]

_TENSOR_PARALLEL_TYPES = tuple(
    getattr(nn.layers.distributed, n) for n in (
        "AllToShardedLinear", "ShardedToAllLinear",
        "QuantizedAllToShardedLinear", "QuantizedShardedToAllLinear")
    if hasattr(nn.layers.distributed, n))
# dtypes an activation may have; gathered as float32 (exact for all of them at activation scale)
_DTYPES = (mx.float32, mx.float16, mx.bfloat16, mx.int32, mx.uint32, mx.int64, mx.bool_)
_MAX_NDIM = 8


def _world() -> Optional[Any]:
    if not mx.distributed.is_available():
        return None
    return mx.distributed.init()


def rank() -> int:
    """This process's rank in the world group (0 when not launched distributed)."""
    g = _world()
    return 0 if g is None else g.rank()


def world_size() -> int:
    g = _world()
    return 1 if g is None else g.size()


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process): the rank that prints and writes files."""
    return rank() == 0


@dataclass
class Sharding:
    """How one rank holds a sharded model."""

    kind: str  # "pipeline", "tensor" or "pipeline+tensor"
    group: Any  # the mx.distributed group activations are gathered over (pipeline) / TP group
    local_layers: list[int] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    @property
    def pipelined(self) -> bool:
        return "pipeline" in self.kind

    def gather(self, names: list[str], store: dict[str, mx.array]) -> dict[str, mx.array]:
        """Every name's activation on every rank, from the one rank that holds it (`store` holds
        this rank's own). Two collectives: the shapes, then all values in one flat all-sum
        (zeros from the ranks that don't own a name, so the owner's values come back exactly)."""
        meta = np.zeros((len(names), 3 + _MAX_NDIM), np.int32)
        for k, n in enumerate(names):
            if n in store:
                v = store[n]
                if v.ndim > _MAX_NDIM or v.dtype not in _DTYPES:
                    raise ValueError(f"cannot gather {n!r} across ranks: shape {v.shape}, "
                                     f"dtype {v.dtype}")
                meta[k, :3] = (1, v.ndim, _DTYPES.index(v.dtype))
                meta[k, 3:3 + v.ndim] = v.shape
        meta = np.array(_all_sum(mx.array(meta), self.group))
        owners = meta[:, 0]
        if (owners != 1).any():
            bad = [n for n, o in zip(names, owners, strict=True) if o != 1]
            raise RuntimeError(f"hook points {bad} are held by {sorted(set(owners.tolist()))} "
                               f"ranks, expected exactly one (is every rank asking for the same "
                               f"names?)")
        shapes = [tuple(int(d) for d in row[3:3 + row[1]]) for row in meta]
        dtypes = [_DTYPES[int(row[2])] for row in meta]
        flat = [(store[n].astype(mx.float32) if n in store else mx.zeros(s, mx.float32))
                .reshape(-1) for n, s in zip(names, shapes, strict=True)]
        total = _all_sum(mx.concatenate(flat) if flat else mx.zeros((0,)), self.group)
        out, start = {}, 0
        for n, s, dt in zip(names, shapes, dtypes, strict=True):
            size = int(np.prod(s)) if s else 1
            out[n] = total[start:start + size].reshape(s).astype(dt)
            start += size
        mx.eval(out)
        return out

    def broadcast(self, x: mx.array) -> mx.array:
        """`x` as rank 0 has it, on every rank (lazy): tokens every rank then agrees on. The
        other ranks send `x * 0`, not fresh zeros: the result must still depend on their own
        `x`, or evaluating it would skip their part of the forward pass (a pipeline's send)."""
        return _all_sum(x if self.rank == 0 else x * 0, self.group)


def _all_sum(x: mx.array, group: Any) -> mx.array:
    return mx.distributed.all_sum(x, group=group, stream=mx.cpu)


def detect_sharding(model: nn.Module, blocks_owner: Any, blocks: list,
                    group: Any = None) -> Optional[Sharding]:
    """The sharding of an mlx-lm model, or None for a model every rank holds whole."""
    pipeline_size = int(getattr(blocks_owner, "pipeline_size", 1) or 1)
    has_none = any(b is None for b in blocks)
    tensor_group = next((m.group for m in model.modules()
                         if isinstance(m, _TENSOR_PARALLEL_TYPES)), None)
    if pipeline_size <= 1 and not has_none:
        if tensor_group is None or tensor_group.size() <= 1:
            return None
        return Sharding("tensor", group or tensor_group, list(range(len(blocks))))
    local = [i for i, b in enumerate(blocks) if b is not None]
    group = group if group is not None else _world()
    if group is None or group.size() != pipeline_size:
        raise ValueError(
            f"the model is pipeline-sharded over {pipeline_size} ranks but the "
            f"{'given' if group is not None else 'world'} group has "
            f"{1 if group is None else group.size()}: pass the pipeline group, "
            f"HookedModel(model, tokenizer, group=pipeline_group)")
    kind = "pipeline+tensor" if tensor_group is not None and tensor_group.size() > 1 else "pipeline"
    return Sharding(kind, group, local)
