"""The serving engine: one thread (a `mlux.web.Worker`) owns the model, parses requests that
build arrays, and decodes every live request on the one decoder (`mlux.decode.Decoder`).

Continuous batching: a request that arrives while others decode is queued as a task between two
decoding steps, prefilled, then joined to the batch; finished or cancelled rows are removed. Each
row carries its own steering, so no steering leaks from one request into another. Request threads
never run MLX themselves: they wait on their job's queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from ..decode import Decoder
from ..model import HookedModel
from ..web import Worker, WorkerClosed
from .protocol import GenerationRequest

__all__ = ["Engine", "Finished", "Job"]

T = TypeVar("T")


@dataclass
class Finished:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    error: Optional[BaseException] = None


@dataclass
class Job:
    request: GenerationRequest
    out: queue.Queue[Union[int, Finished]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish: Optional[Finished] = None
    fired: list[bool] = field(default_factory=list)  # per steering term, set when it starts

    def tokens(self, alive: Optional[Callable[[], bool]] = None, poll: float = 0.25
               ) -> Iterator[int]:
        """Token ids as they are made; raises the engine's error if the job failed. With
        `alive`, asked every `poll` seconds: False cancels the job."""
        checked = time.monotonic()
        while True:
            try:
                item = self.out.get(timeout=poll if alive is not None else None)
            except queue.Empty:
                item = None
            if alive is not None and time.monotonic() - checked >= poll:
                checked = time.monotonic()
                if not alive():
                    self.cancel()
                    alive = None  # the engine answers with Finished("cancelled")
            if item is None:
                continue
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
        self.worker = Worker("mlux-engine")
        # Touched only on the worker thread:
        self._decoder: Optional[Decoder] = None
        self._jobs: dict[int, Job] = {}
        self._pending: deque[Job] = deque()
        self._stepping = False
        self.steps = 0  # decode steps taken (all rows at once count as one)
        self.live = 0  # rows currently decoding

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the engine's thread (between two decoding steps) and return its result:
        for request parsing that builds arrays (vectors), which must not run elsewhere."""
        try:
            return self.worker.call(fn, *args, **kwargs)
        except WorkerClosed:
            raise RuntimeError("the engine is shut down") from None

    def submit(self, request: GenerationRequest) -> Job:
        job = Job(request)
        try:
            future = self.worker.submit(self._admit, job)
        except WorkerClosed:
            raise RuntimeError("the engine is shut down") from None
        future.add_done_callback(lambda f: f.cancelled() and job.out.put(Finished("cancelled")))
        return job

    def close(self) -> None:
        """Cancel every row, close the decoder and join the engine's thread."""
        self.worker.close(final=self._shutdown)

    # -- on the engine's thread -------------------------------------------------------------
    def _admit(self, job: Job) -> None:
        self._pending.append(job)
        self._schedule()

    def _schedule(self) -> None:
        if not self._stepping:
            try:
                self.worker.submit(self._step)
                self._stepping = True
            except WorkerClosed:  # shutting down: `_shutdown` finishes every job
                pass

    def _insert(self, decoder: Decoder) -> None:
        while self._pending and len(self._jobs) < self.max_batch:
            job = self._pending.popleft()
            if job.cancelled.is_set():  # its client left while it waited
                job.out.put(Finished("cancelled"))
                continue
            r = job.request
            try:
                (uid,) = decoder.insert([r.prompt_tokens], max_tokens=r.max_tokens,
                                        steering=[r.steering or None],
                                        temperature=r.temperature, top_p=r.top_p, seed=r.seed)
            except Exception as e:  # this request alone fails
                job.out.put(Finished("error", e))
                continue
            job.fired = [d.fired for d in decoder.decisions(uid)]
            self._jobs[uid] = job

    def _step(self) -> None:
        """Admit waiting requests, drop cancelled rows, decode one step; then queue the next
        step behind whatever arrived meanwhile."""
        self._stepping = False
        decoder = self._decoder = self._decoder or Decoder(self.hooked)
        try:
            self._insert(decoder)
            gone = [uid for uid, job in self._jobs.items() if job.cancelled.is_set()]
            decoder.remove(gone)
            for uid in gone:
                self._jobs.pop(uid).out.put(Finished("cancelled"))
            if self._jobs:
                for event in decoder.next():
                    job = self._jobs[event.uid]
                    if event.token is not None:
                        job.out.put(event.token)
                    if event.finish is not None:
                        job.out.put(Finished(event.finish))
                        del self._jobs[event.uid]
                self.steps += 1
        except Exception as e:  # the engine must outlive any one bad batch
            self._fail(Finished("error", e))
        self.live = len(self._jobs)
        if self._jobs or self._pending:
            self._schedule()

    def _fail(self, finish: Finished) -> None:
        for job in [*self._jobs.values(), *self._pending]:
            job.out.put(finish)
        self._jobs.clear()
        self._pending.clear()
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self.live = 0

    def _shutdown(self) -> None:
        self._fail(Finished("cancelled"))
