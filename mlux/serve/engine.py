"""The serving engine: one thread owns the model and decodes every live request as one batch.

Continuous batching: requests that arrive while others decode are prefilled as their own
batch and appended to the running batch cache (`BatchKVCache.extend`); finished or cancelled
rows are dropped (`filter`). Each row carries its own steering, rebuilt into per-row hooks
whenever the batch changes, so no steering leaks from one request into another.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

import mlx.core as mx

from ..batch import row_steering_hooks
from ..generate import eos_ids, prefill_with_cache, stream_from_cache
from ..inputs import make_batch_cache, to_token_batch
from ..model import HookedModel
from ..sampling import make_seeded_sampler, sample_rows
from .protocol import GenerationRequest

__all__ = ["Engine", "Finished", "Job"]


@dataclass
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    error: Optional[BaseException] = None


@dataclass
class Job:
    request: GenerationRequest
    out: queue.Queue[Union[int, Finished]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    sampler: Any = None
    finish: Optional[Finished] = None

    def tokens(self) -> Iterator[int]:
        """Token ids as they are made; raises the engine's error if the job failed."""
        while True:
            item = self.out.get()
            if isinstance(item, Finished):
                self.finish = item
                if item.error is not None:
                    raise item.error
                return
            yield item

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, hooked: HookedModel, *, max_batch: int = 8) -> None:
        self.hooked = hooked
        self.max_batch = max(1, max_batch)
        self.batching = hooked._supports_padded_batch() and self._extendable()
        self._queue: queue.Queue[Optional[Job]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlux-engine", daemon=True)
        self._stop = threading.Event()
        self.steps = 0  # decode steps taken (all rows at once count as one)
        self.live = 0  # rows currently decoding
        self._thread.start()

    def _extendable(self) -> bool:
        cache = make_batch_cache(self.hooked.model, [0])
        return cache is not None and all(hasattr(c, "extend") and hasattr(c, "filter")
                                         for c in cache)

    def submit(self, request: GenerationRequest) -> Job:
        if self._stop.is_set():
            raise RuntimeError("the engine is shut down")
        job = Job(request)
        self._queue.put(job)
        return job

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        rows: list[Job] = []
        state: dict[str, Any] = {"cache": None, "y": None, "hooks": []}
        while not self._stop.is_set():
            try:
                fresh = self._take(block=not rows, room=self.max_batch - len(rows))
                if not self.batching:
                    for job in fresh:
                        self._run_alone(job)
                    continue
                if fresh:
                    self._admit(fresh, rows, state)
                if rows:
                    self._step(rows, state)
                self.live = len(rows)
            except Exception as e:  # the engine must outlive any one bad batch
                for job in rows:
                    job.out.put(Finished("error", e))
                rows.clear()
                state.update(cache=None, y=None, hooks=[])

    def _take(self, block: bool, room: int) -> list[Job]:
        jobs: list[Job] = []
        if room <= 0:
            return jobs
        try:
            item = self._queue.get(block=block)
            while True:
                if item is None:
                    break
                jobs.append(item)
                if len(jobs) >= room:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                job.out.put(Finished("cancelled"))
            else:
                live.append(job)
        return live

    def _hooks_for(self, jobs: list[Job]) -> list:
        return row_steering_hooks(self.hooked, [j.request.steering or None for j in jobs],
                                  [len(j.request.prompt_tokens) for j in jobs])

    def _sample(self, jobs: list[Job], logits: mx.array) -> mx.array:
        return sample_rows(logits, [j.sampler for j in jobs],
                           greedy=all(j.request.temperature == 0 for j in jobs))

    def _admit(self, fresh: list[Job], rows: list[Job], state: dict[str, Any]) -> None:
        """Prefill newcomers as their own left-padded batch, then append them to the rows."""
        for job in fresh:
            r = job.request
            job.sampler = make_seeded_sampler(r.temperature, r.top_p, r.seed)
        batch = to_token_batch(None, [j.request.prompt_tokens for j in fresh])
        cache = make_batch_cache(self.hooked.model, batch.left_padding)
        with self.hooked.hooks(self._hooks_for(fresh)):
            logits = self.hooked.model(batch.tokens, cache=cache)[:, -1]
            y = self._sample(fresh, logits)
            mx.eval(y, [c.state for c in cache])
        if state["cache"] is None:
            state["cache"], state["y"] = cache, y
        else:
            for mine, theirs in zip(state["cache"], cache, strict=True):
                mine.extend(theirs)
            state["y"] = mx.concatenate([state["y"], y])
        rows.extend(fresh)
        state["hooks"] = self._hooks_for(rows)

    def _step(self, rows: list[Job], state: dict[str, Any]) -> None:
        """Hand out each row's pending token, drop finished rows, then decode one step."""
        stop = eos_ids(self.hooked.tokenizer)
        keep = []
        for r, token in enumerate(state["y"].tolist()):
            job = rows[r]
            if job.cancelled.is_set():
                job.out.put(Finished("cancelled"))
            elif token in stop:
                job.out.put(Finished("stop"))
            else:
                job.out.put(token)
                job.produced += 1
                if job.produced >= job.request.max_tokens:
                    job.out.put(Finished("length"))
                else:
                    keep.append(r)
        if len(keep) < len(rows):
            survivors = [rows[r] for r in keep]
            rows[:] = survivors
            if not rows:
                state.update(cache=None, y=None, hooks=[])
                return
            for c in state["cache"]:
                c.filter(keep)
            state["y"] = state["y"][mx.array(keep)]
            state["hooks"] = self._hooks_for(rows)
        with self.hooked.hooks(state["hooks"]):
            logits = self.hooked.model(state["y"][:, None], cache=state["cache"])[:, -1]
            state["y"] = self._sample(rows, logits)
            mx.eval(state["y"])
        self.steps += 1

    def _run_alone(self, job: Job) -> None:
        """Architectures without padded batches: one request at a time, through the plain path."""
        r = job.request
        hooks = self._hooks_for([job])
        try:
            cache, logits = prefill_with_cache(self.hooked, r.prompt_tokens, hooks=hooks)
            stream = stream_from_cache(self.hooked, cache, logits, max_tokens=r.max_tokens,
                                       hooks=hooks, temperature=r.temperature, top_p=r.top_p,
                                       seed=r.seed)
            n = 0
            for token in stream:
                if job.cancelled.is_set():
                    stream.close()
                    job.out.put(Finished("cancelled"))
                    return
                job.out.put(token)
                n += 1
            job.out.put(Finished("length" if n >= r.max_tokens else "stop"))
        except Exception as e:
            job.out.put(Finished("error", e))
