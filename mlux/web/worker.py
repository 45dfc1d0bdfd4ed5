"""One long-lived thread that owns a server's MLX work; request threads hand it work and wait.

MLX gives every thread that evaluates arrays a stream of its own, backed by a thread that never
exits: a server whose request threads ran MLX grew by one thread (and ~9 MB of address space)
per request. So every model call of a server runs on its `Worker`, handed over through a queue,
and `close()` stops and joins that thread before the interpreter exits (a thread still inside
MLX during interpreter shutdown aborts the process with SIGABRT), and destroys the thread's MLX
stream as it ends (a stream left behind aborts the process at exit just the same).
"""

from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import CancelledError, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

import mlx.core as mx

__all__ = ["Worker", "WorkerClosed"]

T = TypeVar("T")
_END = object()  # the end of a streamed iterator


class WorkerClosed(RuntimeError):
    """The worker has stopped (the server is shutting down): no more work is taken."""


@dataclass
class _Task:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class Worker:
    """A queue of calls run one at a time, in order, on one thread (`name`)."""

    def __init__(self, name: str = "mlux-model") -> None:
        self._queue: queue.Queue[Optional[_Task]] = queue.Queue()
        self._lock = threading.Lock()  # orders submit against close
        self._closed = False
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        atexit.register(self.close)  # joined before interpreter shutdown, even if nobody closes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """Whether a call runs or waits (a snapshot, for tests and status pages)."""
        return self._running or not self._queue.empty()

    def on_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `fn(*args, **kwargs)`; its result or exception arrives in the future."""
        task = _Task(lambda: fn(*args, **kwargs))
        with self._lock:
            if self._closed:
                raise WorkerClosed("the server is shutting down")
            self._queue.put(task)
        return task.future

    def call(self, fn: Callable[..., T], *args: Any, timeout: Optional[float] = None,
             **kwargs: Any) -> T:
        """Run `fn` on the worker (directly when already on it) and return its result."""
        if self.on_worker():
            return fn(*args, **kwargs)
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout)
        except CancelledError:
            raise WorkerClosed("the server is shutting down") from None

    def stream(self, make: Callable[[], Iterator[T]], stop: threading.Event) -> Iterator[T]:
        """Run the iterator `make()` on the worker as one task, handing its items to the
        caller's thread as they come. Closing the returned generator (the client left) sets
        `stop`, and waits while the worker closes the iterator (before its next item)."""
        items: queue.Queue[Any] = queue.Queue()

        def pump() -> None:
            if stop.is_set():  # the client left while this waited in the queue
                items.put(_END)
                return
            it: Optional[Iterator[T]] = None
            try:
                it = make()
                for item in it:
                    items.put(item)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the caller's thread, raised there
                items.put(_Failed(exc))
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                items.put(_END)

        future = self.submit(pump)
        future.add_done_callback(lambda f: f.cancelled() and items.put(_END))
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            stop.set()
            if not future.cancel() and not self.on_worker():  # started: wait for it to stop
                wait([future], timeout=60)

    def close(self, timeout: float = 60.0, final: Optional[Callable[[], Any]] = None) -> None:
        """Take no more work, cancel what has not started, let the running call finish, run
        `final` (on the worker: e.g. cancel the rows in flight), then join the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending: list[_Task] = []
            while True:
                try:
                    task = self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    pending.append(task)
            if final is not None:
                self._queue.put(_Task(final))
            self._queue.put(None)
        for task in pending:
            task.future.cancel()
        if not self.on_worker():
            self._thread.join(timeout)
        atexit.unregister(self.close)

    def _run(self) -> None:
        try:
            self._serve()
        finally:  # MLX's stream for this thread outlives it unless destroyed here, and then
            mx.synchronize()  # aborts the process at exit ("terminate called ...", SIGABRT)
            mx.clear_streams()

    def _serve(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            self._running = True
            try:
                result = task.fn()
            except BaseException as exc:  # the worker outlives any one bad call
                task.future.set_exception(exc)
            else:
                task.future.set_result(result)
            finally:
                self._running = False


@dataclass
class _Failed:
    exc: BaseException
