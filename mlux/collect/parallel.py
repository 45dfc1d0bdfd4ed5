"""Data-parallel `collect`: `mlx.launch -n N ... mlux collect --config X` splits the chunks to do
across N ranks, each holding the whole model.

Rank 0 owns the result folder (no shared file system is assumed): it takes the lock, removes a
killed run's temp files, opens (or resumes) the manifest and tells every rank which chunks are
left. The chunks left go out in rounds: in round k, rank r runs chunk `k * N + r`; each rank
serializes its chunk's shards (the same bytes a single process writes) and all of them travel to
rank 0 in one `all_gather`; rank 0 writes them atomically and lists them in the manifest. So the
folder looks exactly as after a single-process run, and a run killed anywhere (one rank or the
whole launch) resumes from the manifest like one.

An exception in a rank's chunk travels with the round's results: every rank then raises (rank 0
after listing the chunks that did finish), instead of the others waiting forever. Every collective
is called by every rank in the same order.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from mlux.atomic import atomic_write_json
from mlux.model import HookedModel

from .chunks import CollectionResult, chunk_tensors, claimed_dir, run_chunk, run_header
from .manifest import Manifest
from .plan import CollectionPlan
from .run_config import CollectConfig
from .shards import serialize_safetensors, shard_entry, write_shard_bytes

__all__ = ["collect_data_parallel"]

_Chunk = tuple[str, int, int, int]  # category, index, start, stop


def _exchange(group: Any, data: bytes) -> list[bytes]:
    """Every rank's `data`, on every rank (two all_gathers: the lengths, then the padded bytes)."""
    size = mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int32), group=group,
                                     stream=mx.cpu)
    sizes = [int(n) for n in np.array(size)]
    width = max(max(sizes), 1)
    buf = np.zeros(width, np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    got = np.array(mx.distributed.all_gather(mx.array(buf), group=group, stream=mx.cpu))
    got = got.reshape(len(sizes), width)
    return [got[r, :n].tobytes() for r, n in enumerate(sizes)]


def _pack(head: dict[str, Any], blobs: list[bytes]) -> bytes:
    text = json.dumps(head).encode()
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _run(hooked: HookedModel, config: CollectConfig, hooks: list[str],
         rows: dict[str, list[list[int]]], prompts: dict[str, list[str]], chunk: _Chunk,
         manifest_paths: Any) -> bytes:
    """One chunk, serialized: its shards' manifest entries and bytes, and its generations."""
    category, index, start, stop = chunk
    inf, out = config.inference, config.output
    bar = tqdm(disable=True)
    acts, texts = run_chunk(hooked, config, hooks, rows[category][start:stop],
                             prompts[category][start:stop], start, bar)
    shards, blobs = {}, []
    for h in hooks if inf.save_activations else []:
        tensors = chunk_tensors(acts.pop(h), start, out.activation_dtype)
        data = serialize_safetensors(tensors, {"hook": h, "category": category,
                                               "index": str(index)})
        shards[h] = {"path": manifest_paths.shard_relpath(category, h, index),
                     "num_samples": stop - start, **shard_entry(data, tensors)}
        blobs.append(data)
    return _pack({"chunk": list(chunk), "shards": shards, "texts": texts or None}, blobs)


def _write(result_dir: Path, manifest: Manifest, data: bytes) -> int:
    """Rank 0: write one serialized chunk's files, then list it. Returns its sample count."""
    head, rest = _unpack(data)
    category, index, start, stop = head["chunk"]
    offset = 0
    for entry in head["shards"].values():
        write_shard_bytes(result_dir / entry["path"], rest[offset:offset + entry["bytes"]])
        offset += entry["bytes"]
    gen_rel = manifest.generations_relpath(category, index) if head["texts"] else None
    if gen_rel:
        (result_dir / gen_rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result_dir / gen_rel, head["texts"])
    manifest.record_chunk(category, index, start, stop, head["shards"], gen_rel)
    return stop - start


def _all_ok(group: Any, ok: bool) -> bool:
    bad = mx.distributed.all_sum(mx.array([0 if ok else 1], dtype=mx.int32), group=group,
                                 stream=mx.cpu)
    return int(np.array(bad)[0]) == 0


def collect_data_parallel(group: Any, config: CollectConfig, hooked: HookedModel,
                          hooks: list[str], dataset: Any, rows: dict[str, list[list[int]]],
                          lengths: dict[str, list[int]], plan: CollectionPlan, result_dir: Path,
                          progress: bool, echo: Callable[[str], None], *, force: bool = False
                          ) -> CollectionResult:
    me, size = group.rank(), group.size()
    header = run_header(config, hooked, hooks, dataset.prompts, lengths, dataset.source)
    mine = {"fingerprint": header["fingerprint"], "model": header["model"]["fingerprint"],
            "error": None}
    manifest: Optional[Manifest] = None
    failure: Optional[BaseException] = None
    with contextlib.ExitStack() as stack:
        if me == 0:
            try:
                stack.enter_context(claimed_dir(result_dir, force=force, echo=echo))
                manifest = Manifest.open(result_dir, header)
                work = [(c, i, s, min(s + config.output.shard_size, len(rs)))
                        for c, rs in rows.items()
                        for i, s in enumerate(range(0, len(rs), config.output.shard_size))]
                mine["todo"] = [w for w in work if not manifest.chunk_done(w[0], w[1])]
                mine["total"] = len(work)
            except Exception as e:  # every rank must hear of it, or they wait forever
                failure, mine["error"] = e, f"{type(e).__name__}: {e}"
        replies = [json.loads(b) for b in _exchange(group, json.dumps(mine).encode())]
        if failure is not None:
            raise failure
        if replies[0]["error"]:
            raise RuntimeError(f"rank 0 could not start the collection: {replies[0]['error']}")
        differ = [r for r, x in enumerate(replies)
                  if (x["fingerprint"], x["model"]) != (replies[0]["fingerprint"],
                                                         replies[0]["model"])]
        if differ:
            raise ValueError(f"ranks {differ} have another config, data set or model than rank "
                             "0 (settings or weights fingerprints differ): every rank must run "
                             "the same config on the same model")
        todo: list[_Chunk] = [tuple(w) for w in replies[0]["todo"]]  # type: ignore[misc]
        total = replies[0]["total"]
        done_samples = len(dataset) - sum(stop - start for _, _, start, stop in todo)
        with tqdm(total=len(dataset), initial=done_samples, unit="prompt", desc="collect",
                  disable=not progress or me != 0, file=sys.stderr) as bar:
            for k in range(0, len(todo), size):
                round_ = todo[k:k + size]
                data = b""
                if me < len(round_):
                    try:
                        data = _run(hooked, config, hooks, rows, dataset.prompts, round_[me],
                                    Manifest)
                    except Exception as e:
                        failure = e
                        data = _pack({"error": f"{type(e).__name__}: {e}"}, [])
                results = _exchange(group, data)
                errors = {}
                ok = True
                if me == 0:
                    try:
                        for r, blob in enumerate(results[:len(round_)]):
                            head, _ = _unpack(blob)
                            if "error" in head:
                                errors[r] = head["error"]
                                continue
                            bar.update(_write(result_dir, manifest, blob))
                        manifest.save()
                    except Exception as e:
                        failure, ok = e, False
                else:
                    errors = {r: _unpack(b)[0]["error"] for r, b in enumerate(results[:len(round_)])
                              if "error" in _unpack(b)[0]}
                if not _all_ok(group, ok) and failure is None:
                    raise RuntimeError("rank 0 failed to write the round's shards (see its "
                                       "error); rerun to resume")
                if failure is not None:
                    raise failure
                if errors:
                    raise RuntimeError("collection failed on "
                                       + "; ".join(f"rank {r}: {m}" for r, m in errors.items())
                                       + " (finished chunks are kept; rerun to resume)")
        if me == 0:
            manifest.data["complete"] = True
            manifest.save()
    return CollectionResult(result_dir, plan, manifest, len(todo), total - len(todo))
