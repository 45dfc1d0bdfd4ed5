"""What a collection will cost before it starts: hook points, disk, memory, a batch size that fits.

Estimates are upper bounds from token counts: `all` stores every prompt token, `generated` every
one of `max_new_tokens` (generation may stop earlier at EOS).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from mlux.layers import WARN_HOOK_POINTS

from .run_config import CollectConfig

__all__ = ["CollectionPlan", "available_memory", "make_plan"]

_MIB, _GIB = 2**20, 2**30
_MEMORY_BUDGET = 0.8  # of available memory a suggested batch size may use
_MAX_SUGGESTED_BATCH = 256


def available_memory() -> int:
    """Bytes the OS reports as available (Linux MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * _GIB


@dataclass(frozen=True)
class CollectionPlan:
    hook_points: list[str]
    positions: tuple[str, ...]
    samples: dict[str, int]
    prompt_tokens: int
    max_prompt_tokens: int
    storage_bytes: int
    weights_bytes: int
    batch_bytes: int  # forward pass of one batch incl. logits and captures
    buffer_bytes: int  # one shard's activations held before writing
    batch_size: int
    suggested_batch_size: int
    available_bytes: int
    free_disk_bytes: Optional[int]
    warnings: list[str] = field(default_factory=list)

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.batch_bytes + self.buffer_bytes

    def describe(self) -> str:
        pts = self.hook_points
        lines = [
            f"hook points ({len(pts)}): {', '.join(pts)}",
            f"positions: {', '.join(self.positions)}",
            "samples: " + ", ".join(f"{c}={n}" for c, n in self.samples.items())
            + f" ({self.prompt_tokens} prompt tokens, longest {self.max_prompt_tokens})",
            f"storage estimate: {_size(self.storage_bytes)}"
            + (f" (free on disk: {_size(self.free_disk_bytes)})"
               if self.free_disk_bytes is not None else ""),
            f"memory estimate: {_size(self.memory_bytes)} = weights {_size(self.weights_bytes)}"
            f" + batch of {self.batch_size} {_size(self.batch_bytes)} + shard buffer "
            f"{_size(self.buffer_bytes)} (available: {_size(self.available_bytes)})",
            f"suggested batch_size for this machine: {self.suggested_batch_size}",
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / _MIB:.1f} MiB"


def _free_disk(result_dir: Path) -> Optional[int]:
    for p in (result_dir, *result_dir.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def make_plan(config: CollectConfig, *, hook_points: Sequence[str], hidden_size: int,
              vocab_size: int, weights_bytes: int, lengths: dict[str, list[int]]
              ) -> CollectionPlan:
    """Estimate disk and memory of `config` given the prompts' token lengths per category."""
    inf, out = config.inference, config.output
    positions = inf.positions if inf.save_activations else ()
    hooks = len(hook_points) if inf.save_activations else 0
    value_bytes = 4 if out.activation_dtype == "float32" else 2
    all_lengths = [n for ls in lengths.values() for n in ls]
    n_samples, n_tokens = len(all_lengths), sum(all_lengths)
    longest = max(all_lengths, default=0)
    gen = inf.max_new_tokens

    def rows(samples: int, tokens: int) -> int:
        # Rows one hook point stores for `samples` prompts of `tokens` tokens in total.
        per = {"last": samples, "mean": samples, "all": tokens, "generated": samples * gen}
        return sum(per[p] for p in positions)

    row = hidden_size * value_bytes
    storage = hooks * row * rows(n_samples, n_tokens)
    full_capture = bool({"all", "generated"} & set(positions))
    width = longest + (gen if "generated" in positions else 0)

    def batch_bytes(b: int) -> int:
        captured = b * hooks * hidden_size * 4 * (width if full_capture else len(positions))
        # float32 logits plus ~8 hidden-sized temporaries per token in the forward pass
        return b * width * 4 * (vocab_size + 8 * hidden_size) + captured

    shard = min(out.shard_size, max((len(v) for v in lengths.values()), default=0))
    buffer = hooks * row * rows(shard, shard * longest)
    available = available_memory()
    budget = int(available * _MEMORY_BUDGET) - weights_bytes - buffer
    suggested = 1
    while suggested * 2 <= _MAX_SUGGESTED_BATCH and batch_bytes(suggested * 2) <= budget:
        suggested *= 2
    free = _free_disk(Path(out.result_dir).expanduser().absolute())
    warnings = []
    if len(hook_points) > WARN_HOOK_POINTS:
        warnings.append(f"{len(hook_points)} hook points (more than {WARN_HOOK_POINTS}): "
                        f"~{_size(storage)} on disk; consider a sparser activation_layers")
    if batch_bytes(inf.batch_size) > budget:
        warnings.append(f"batch_size {inf.batch_size} may not fit in memory; try {suggested}")
    if free is not None and storage > free:
        warnings.append(f"the estimate ({_size(storage)}) exceeds the free disk space "
                        f"({_size(free)}) under {out.result_dir}")
    return CollectionPlan(
        hook_points=list(hook_points), positions=tuple(positions),
        samples={c: len(v) for c, v in lengths.items()}, prompt_tokens=n_tokens,
        max_prompt_tokens=longest, storage_bytes=storage, weights_bytes=weights_bytes,
        batch_bytes=batch_bytes(inf.batch_size), buffer_bytes=buffer,
        batch_size=inf.batch_size, suggested_batch_size=suggested, available_bytes=available,
        free_disk_bytes=free, warnings=warnings)
