"""One explorer app's state, kept in `app.extensions["mlux.explorer"]` and read through
`get_state()`: the model, the vector library and cache, the limits and the model's thread.

All mutable state hangs off the app, never off a module, so tests can run several apps side by
side, each with its own model thread and cache. The factory (`app.py`) creates it, the blueprint
(`api.py`) reads it; neither imports the other's state.
"""

from __future__ import annotations

import secrets
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

from flask import current_app

from mlux.explorer.engine import SweepFn
from mlux.explorer.validation import Limits, VectorRef
from mlux.model import HookedModel
from mlux.vector_library import VectorLibrary
from mlux.vectors import SteeringVector
from mlux.web import LOOPBACK_HOSTS, RequestError, Worker, WorkerClosed

__all__ = ["STATE_KEY", "ExplorerState", "get_state", "with_warnings"]

STATE_KEY = "mlux.explorer"
T = TypeVar("T")


@dataclass
class ExplorerState:
    """One explorer app's model, library, limits and the one thread that runs all model work
    (`mlux.web.Worker`: requests queue there, one at a time, and never run MLX themselves)."""

    hooked: HookedModel
    library: VectorLibrary
    limits: Limits
    info: dict[str, Any]
    defaults: dict[str, Any]
    sweeps: dict[str, SweepFn]
    scorers: dict[str, Callable[[str], Optional[bool]]] = field(default_factory=dict)
    lock_timeout: float = 300.0
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS
    max_vectors: int = 32
    worker: Worker = field(default_factory=lambda: Worker("mlux-explorer"))
    vectors: OrderedDict[str, SteeringVector] = field(default_factory=OrderedDict)
    _vectors_lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on the model's thread, after the work queued before it; 503 if it has not
        started after `lock_timeout` seconds. A ValueError (the library's own checks, e.g.
        prompts that encode to nothing) is a 400."""
        try:
            future = self.worker.submit(_as_request_error, fn)
        except WorkerClosed:
            raise RequestError("the explorer is shutting down", status=503) from None
        try:
            return future.result(self.lock_timeout)
        except FutureTimeout:
            if future.cancel():
                raise RequestError(f"the model stayed busy for {self.lock_timeout:g} s; try "
                                   "again", status=503) from None
            return future.result()  # it started just now: let it finish
        except CancelledError:
            raise RequestError("the explorer is shutting down", status=503) from None

    def stream(self, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        """The items of `make()`, run on the model's thread and handed over as they come;
        closing this generator (the client left) stops the work at its next item."""
        return self.worker.stream(lambda: _as_request_errors(make()), threading.Event())

    def close(self) -> None:
        """Stop the model's thread (after the call in progress) and join it."""
        self.worker.close()

    def remember(self, vector: SteeringVector) -> str:
        """Keep a computed vector under a fresh id; the oldest are dropped past `max_vectors`."""
        vid = secrets.token_hex(8)
        with self._vectors_lock:
            self.vectors[vid] = vector
            while len(self.vectors) > self.max_vectors:
                self.vectors.popitem(last=False)
        return vid

    def resolve(self, ref: VectorRef, field: str = "vector") -> SteeringVector:
        """The referenced vector, checked against this model's width and depth; errors name
        `field.id` / `field.name` (or `field` itself when it is not "vector")."""
        sub = (lambda key: f"{field}.{key}") if field == "vector" else (lambda key: field)
        if ref.id is not None:
            with self._vectors_lock:
                vector = self.vectors.get(ref.id)
            if vector is None:
                raise RequestError(f"no computed vector with id {ref.id!r} (the last "
                                   f"{self.max_vectors} are kept)", sub("id"), 404)
        else:
            try:
                vector = self.library.load(ref.name)  # type: ignore[arg-type]
            except FileNotFoundError:
                raise RequestError(f"no vector named {ref.name!r} in the library", sub("name"),
                                   404) from None
            except ValueError as exc:
                raise RequestError(str(exc), sub("name"), 422) from None
        try:
            vector.check_compatible(self.hooked.hidden_size, self.hooked.num_layers)
        except ValueError as exc:
            raise RequestError(str(exc), field) from None
        return vector


def _as_request_error(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def _as_request_errors(items: Iterator[T]) -> Iterator[T]:
    try:
        yield from items  # closing this generator closes `items` too
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def with_warnings(fn: Callable[[], T]) -> tuple[T, list[str]]:
    """`fn()` and the text of the warnings it raised (e.g. a prompt of unknown tokens), for
    the page to show; run on the model's thread, the only one that warns about the model."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, list(dict.fromkeys(str(w.message) for w in caught))


def get_state() -> ExplorerState:
    """The current app's explorer state (inside a request or an app context)."""
    return current_app.extensions[STATE_KEY]
