"""The serving engine: one thread owns the model and decodes every live request on the one
decoder (`mlux.decode.Decoder`).

Continuous batching: requests that arrive while others decode are inserted into the running
decoder (prefilled, then joined to the batch); finished or cancelled rows are removed. Each row
carries its own steering, so no steering leaks from one request into another.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from ..decode import Decoder
from ..model import HookedModel
from .protocol import GenerationRequest

__all__ = ["Engine", "Finished", "Job"]


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
        self._queue: queue.Queue[Optional[Job]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlux-engine", daemon=True)
        self._stop = threading.Event()
        self.steps = 0  # decode steps taken (all rows at once count as one)
        self.live = 0  # rows currently decoding
        self._thread.start()

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
        decoder = Decoder(self.hooked)
        jobs: dict[int, Job] = {}
        while not self._stop.is_set():
            try:
                for job in self._take(block=not jobs, room=self.max_batch - len(jobs)):
                    r = job.request
                    (uid,) = decoder.insert([r.prompt_tokens], max_tokens=r.max_tokens,
                                            steering=[r.steering or None],
                                            temperature=r.temperature, top_p=r.top_p,
                                            seed=r.seed)
                    job.fired = [d.fired for d in decoder.decisions(uid)]
                    jobs[uid] = job
                gone = [uid for uid, job in jobs.items() if job.cancelled.is_set()]
                decoder.remove(gone)
                for uid in gone:
                    jobs.pop(uid).out.put(Finished("cancelled"))
                if jobs:
                    for event in decoder.next():
                        job = jobs[event.uid]
                        if event.token is not None:
                            job.out.put(event.token)
                        if event.finish is not None:
                            job.out.put(Finished(event.finish))
                            del jobs[event.uid]
                    self.steps += 1
                self.live = len(jobs)
            except Exception as e:  # the engine must outlive any one bad batch
                for job in jobs.values():
                    job.out.put(Finished("error", e))
                jobs.clear()
                decoder.close()
                self.live = 0
        decoder.close()

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
