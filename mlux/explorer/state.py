"""One explorer app's state, kept in `app.extensions["mlux.explorer"]` and read through
`get_state()`: the model, the vector library and cache, the limits and the model lock.

All mutable state hangs off the app, never off a module, so tests can run several apps side by
side, each with its own lock and cache. The factory (`app.py`) creates it, the blueprint
(`api.py`) reads it; neither imports the other's state.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from flask import current_app

from mlux.explorer.engine import SweepFn
from mlux.explorer.validation import Limits, VectorRef
from mlux.model import HookedModel
from mlux.vector_library import VectorLibrary
from mlux.vectors import SteeringVector
from mlux.web import LOOPBACK_HOSTS, RequestError

__all__ = ["STATE_KEY", "ExplorerState", "get_state"]

STATE_KEY = "mlux.explorer"


@dataclass
class ExplorerState:
    """One explorer app's model, library, limits and the lock that serialises model work."""

    hooked: HookedModel
    library: VectorLibrary
    limits: Limits
    info: dict[str, Any]
    defaults: dict[str, Any]
    sweeps: dict[str, SweepFn]
    lock_timeout: float = 300.0
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS
    max_vectors: int = 32
    lock: threading.Lock = field(default_factory=threading.Lock)
    vectors: OrderedDict[str, SteeringVector] = field(default_factory=OrderedDict)
    _vectors_lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire_model(self) -> None:
        """Wait for the model (requests queue here); 503 after `lock_timeout` seconds."""
        if not self.lock.acquire(timeout=self.lock_timeout):
            raise RequestError(f"the model stayed busy for {self.lock_timeout:g} s; try again",
                               status=503)

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


def get_state() -> ExplorerState:
    """The current app's explorer state (inside a request or an app context)."""
    return current_app.extensions[STATE_KEY]
