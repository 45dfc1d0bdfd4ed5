"""Steering vectors: per-layer residual-stream directions and their arithmetic.

Layer numbering (used everywhere in mlux): layer ``i`` is the output of decoder block ``i``
(0-based), i.e. the residual stream leaving block ``i``. That is Hugging Face's
``hidden_states[i + 1]`` and the hook point ``residuals_i``; a direction stored for layer ``i``
is added back to the output of block ``i``.

Files: ``save``/``load`` (safetensors) are ``mlux.vector_files``; ``export_gguf``/``import_gguf``
(llama.cpp control vectors, whose ``direction.N`` is mlux layer ``N``) are ``mlux.vector_gguf``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlux import vector_files, vector_gguf
from mlux.atomic import PathLike
from mlux.positions import resolve_positions
from mlux.steering import Steering, steering_hooks
from mlux.vector_files import FORMAT_VERSION, HOOK_POINT

__all__ = ["FORMAT_VERSION", "HOOK_POINT", "SteeringVector", "read_summary"]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mlux_version() -> str:
    # Read lazily from the installed distribution: importing mlux/__init__ here would be circular.
    try:
        return importlib.metadata.version("mlux")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+local"


def _as_layer(key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise ValueError(f"layer indices must be integers, got {key!r}")
    if key < 0:
        raise ValueError(f"layer indices must be >= 0, got {key}")
    return int(key)


def _as_direction(layer: int, value: Any) -> mx.array:
    try:
        # Overflow to inf is reported below with the layer named, so numpy need not warn.
        with np.errstate(over="ignore"):
            arr = value if isinstance(value, mx.array) else mx.array(np.asarray(value, np.float32))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {layer}: direction is not a numeric array ({exc})") from exc
    if arr.ndim != 1:
        raise ValueError(f"layer {layer}: direction must be 1-D (hidden_size,), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"layer {layer}: direction is empty")
    if not mx.issubdtype(arr.dtype, mx.number) or mx.issubdtype(arr.dtype, mx.complexfloating):
        raise ValueError(f"layer {layer}: direction has non-real dtype {arr.dtype}")
    arr = arr.astype(mx.float32)
    if not mx.all(mx.isfinite(arr)).item():
        what = "NaN" if mx.any(mx.isnan(arr)).item() else "infinite"
        raise ValueError(f"layer {layer}: direction contains {what} values")
    if not math.isfinite(mx.linalg.norm(arr).item()):  # finite values, but not their norm
        raise ValueError(f"layer {layer}: the direction's norm overflows float32 (values up to "
                         f"{mx.abs(arr).max().item():.3g}); scale it down")
    return arr


def _as_scalar(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    scalar = float(value)
    if not math.isfinite(scalar):
        raise ValueError(f"cannot scale a SteeringVector by {scalar}")
    return scalar


@dataclass(eq=False)
class SteeringVector(Mapping):
    """Per-layer steering directions (float32, shape ``(D,)``) plus provenance metadata.

    A read-only mapping layer -> direction (``vec[12]``, ``vec.items()``, ``dict(vec)``), so
    code written for a ``dict[int, mx.array]`` keeps working. ``directions`` maps layer ``i``
    (output of 0-based block ``i``) to its direction; numpy arrays and lists are accepted and
    converted. Validation errors raise ``ValueError``. Vectors are values: every operation
    returns a new vector, and ``==`` is identity.
    """

    directions: dict[int, mx.array]
    model_id: str | None = None
    method: str = "mean_diff"
    num_pairs: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_utc_now)
    version: str = field(default_factory=_mlux_version)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ValueError("a SteeringVector needs at least one layer direction, got none")
        clean: dict[int, mx.array] = {}
        for key, value in self.directions.items():
            layer = _as_layer(key)
            clean[layer] = _as_direction(layer, value)
        first = min(clean)
        size = clean[first].shape[0]
        for layer, vec in clean.items():
            if vec.shape[0] != size:
                raise ValueError(f"layer {layer}: hidden size {vec.shape[0]} differs from "
                                 f"layer {first}'s {size}")
        self.directions = dict(sorted(clean.items()))
        n = self.num_pairs
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0):
            raise ValueError(f"num_pairs must be a non-negative int or None, got {n!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")

    # -- inspection ---------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def norms(self) -> dict[int, float]:
        return {layer: float(mx.linalg.norm(d).item()) for layer, d in self.directions.items()}

    def __getitem__(self, layer: int) -> mx.array:
        try:
            return self.directions[layer]
        except KeyError:
            raise KeyError(f"layer {layer} is not in this vector (layers: {self.layers})") from None

    def __contains__(self, layer: object) -> bool:
        return layer in self.directions

    def __iter__(self) -> Iterator[int]:
        return iter(self.directions)

    def __len__(self) -> int:
        return len(self.directions)

    # Identity, not Mapping's value comparison (which is ambiguous for arrays).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @contextlib.contextmanager
    def apply(self, hooked: Any, alpha: float = 1.0, *, positions: Any = "all") -> Iterator[Any]:
        """Steer everything generated inside the block with ``alpha`` times this vector.

        Windows that don't depend on the prompt (``"all"``, an int, a range) are hooks, so plain
        mlx-lm calls on ``hooked.model`` are steered too; ``"prompt"`` / ``"generated"`` need each
        prompt's length and apply to mlux's generation (every row its decoder starts).
        """
        self.check_compatible(hooked.hidden_size, hooked.num_layers)
        if positions in ("prompt", "generated"):
            term = Steering(self, float(alpha), positions=positions)
            term.per_layer()  # validate before installing
            hooked.ambient_steering.append(term)
            try:
                yield hooked
            finally:
                hooked.ambient_steering.remove(term)
            return
        resolve_positions(positions, None)
        with hooked.hooks(steering_hooks(self, alpha, positions=positions)):
            yield hooked

    def to_numpy(self) -> dict[int, np.ndarray]:
        return {layer: np.array(d) for layer, d in self.directions.items()}

    def __repr__(self) -> str:
        norms = ", ".join(f"{layer}: {n:.3g}" for layer, n in self.norms.items())
        return (
            f"SteeringVector(model_id={self.model_id!r}, method={self.method!r}, "
            f"hidden_size={self.hidden_size}, layers={self.layers}, norms={{{norms}}})"
        )

    def check_compatible(self, hidden_size: int, num_layers: int | None = None) -> None:
        """Raise ``ValueError`` unless this vector fits a model of that width and depth."""
        if self.hidden_size != hidden_size:
            made_for = f" (it was made for {self.model_id})" if self.model_id else ""
            raise ValueError(
                f"steering vector hidden size {self.hidden_size} does not match the model's "
                f"hidden size {hidden_size}{made_for}"
            )
        if num_layers is not None:
            bad = [layer for layer in self.layers if layer >= num_layers]
            if bad:
                raise ValueError(
                    f"steering vector layers {bad} are out of range for a model with "
                    f"{num_layers} layers (valid layers: 0..{num_layers - 1})"
                )

    # -- derived vectors ----------------------------------------------------------------------

    def _derive(self, directions: dict[int, mx.array], **changes: Any) -> SteeringVector:
        kwargs: dict[str, Any] = {"model_id": self.model_id, "method": self.method,
                                  "num_pairs": self.num_pairs,
                                  "metadata": copy.deepcopy(self.metadata), **changes}
        return SteeringVector(directions, **kwargs)

    def select(self, layers: Iterable[int]) -> SteeringVector:
        """A copy restricted to ``layers`` (all of which must be present)."""
        wanted = sorted({_as_layer(layer) for layer in layers})
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise ValueError(f"layers {missing} are not in this vector (layers: {self.layers})")
        return self._derive({layer: self.directions[layer] for layer in wanted})

    def normalized(self) -> SteeringVector:
        """A copy with every layer's direction scaled to unit L2 norm."""
        out = {}
        for layer, norm in self.norms.items():
            if norm == 0.0:
                raise ValueError(f"layer {layer}: cannot normalise a zero direction")
            out[layer] = self.directions[layer] / norm
        return self._derive(out)

    def _combine(self, other: object, subtract: bool) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise ValueError(f"cannot combine steering vectors of hidden size "
                             f"{self.hidden_size} and {other.hidden_size}")
        if self.model_id and other.model_id and self.model_id != other.model_id:
            warnings.warn(f"combining steering vectors of different models ({self.model_id!r} "
                          f"and {other.model_id!r}); the result has no model_id", stacklevel=3)
        # Union of layers: a layer one side lacks counts as a zero direction there.
        out: dict[int, mx.array] = {}
        for layer in sorted(set(self.directions) | set(other.directions)):
            a, b = self.directions.get(layer), other.directions.get(layer)
            if b is None:
                out[layer] = a
            elif a is None:
                out[layer] = -b if subtract else b
            else:
                out[layer] = a - b if subtract else a + b
        shared = {k: copy.deepcopy(v) for k, v in self.metadata.items()
                  if other.metadata.get(k) == v}
        model_id = self.model_id if self.model_id == other.model_id else None
        return self._derive(out, model_id=model_id, method="arithmetic", num_pairs=None,
                            metadata=shared)

    def __add__(self, other: object) -> SteeringVector:
        """Layer by layer over the union of both sides' layers: a layer present on one side
        only counts as zero on the other. Vectors of two different models (both `model_id`s
        set) warn, as repeng does; the result has `model_id` None unless both agree."""
        return self._combine(other, subtract=False)

    def __radd__(self, other: object) -> SteeringVector:
        # Lets sum([a, b, c]) work: sum() starts from the integer 0.
        if isinstance(other, numbers.Number) and other == 0:
            return self._derive(dict(self.directions))
        return NotImplemented

    def __sub__(self, other: object) -> SteeringVector:
        return self._combine(other, subtract=True)

    def __mul__(self, other: object) -> SteeringVector:
        scalar = _as_scalar(other)
        if scalar is None:
            return NotImplemented
        return self._derive({layer: d * scalar for layer, d in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> SteeringVector:
        scalar = _as_scalar(other)
        if scalar is None:
            return NotImplemented
        if scalar == 0.0:
            raise ZeroDivisionError("cannot divide a SteeringVector by zero")
        return self._derive({layer: d / scalar for layer, d in self.directions.items()})

    def __neg__(self) -> SteeringVector:
        return self._derive({layer: -d for layer, d in self.directions.items()})

    # -- files (mlux.vector_files) --------------------------------------------------------------

    def save(self, path: PathLike) -> Path:
        """Write a safetensors file atomically (an existing file is replaced only on success)."""
        return vector_files.save_safetensors(self, path)

    @classmethod
    def load(cls, path: PathLike, *, hidden_size: int | None = None) -> SteeringVector:
        """Read a file written by ``save``; also accepts bare ``residuals_N``/``direction.N``
        safetensors without mlux metadata. ``hidden_size``, if given, must match."""
        return vector_files.load_safetensors(path, hidden_size, vector_cls=cls)

    def export_gguf(self, path: PathLike, *, model_hint: str | None = None) -> Path:
        """Write a llama.cpp control vector: ``direction.{i}`` for mlux layer ``i`` (the same
        block output; layer 0 cannot be exported; no model id: hint "mlux-unknown"). See
        ``mlux.vector_gguf.export_gguf``."""
        return vector_gguf.export_gguf(self, path, model_hint=model_hint)

    @classmethod
    def import_gguf(cls, path: PathLike) -> SteeringVector:
        """Read a llama.cpp control vector (from mlux, repeng or llama-cvector-generator);
        ``direction.N`` becomes mlux layer ``N``; llama.cpp's rules hold (``direction.0`` refused,
        ``direction.01`` + ``direction.1`` summed). See ``mlux.vector_gguf``."""
        return vector_gguf.import_gguf(path, vector_cls=cls)


def read_summary(path: PathLike) -> dict[str, Any]:
    """The mlux metadata of a saved vector (for listings), checked exactly as ``load`` checks
    it (``mlux.vector_check``): a file summarised here loads."""
    return vector_files.read_summary(path, vector_cls=SteeringVector)
