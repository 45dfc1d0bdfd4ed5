"""Hook points: the `HookWrapper` that stands in a module slot, and the `HookContext` hooks see.

A wrapper is a transparent proxy: attribute reads and writes, and the dict interface that
`mlx.nn.Module` is built on, go to the wrapped module. So parameter names, `load_weights`,
`nn.quantize` and `tree_flatten` see the original tree, and model code that reads
`layer.use_sliding` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn

__all__ = ["BlockFrame", "Hook", "HookContext", "HookError", "HookWrapper", "TokenClock",
           "cache_offsets", "cache_start", "mark_position", "normalise_start"]


class HookError(ValueError):
    """A hook misbehaved (wrong return type or shape)."""


@dataclass(frozen=True)
class HookContext:
    """What a hook knows about the forward pass it runs in.

    `offset` is the number of tokens the sequence consumed before this forward, so the absolute
    position of `x[:, t]` is `offset + t`, whatever the layer's cache is (KV, state-space, conv,
    shared or none): mlux's decoder, prefill and capture declare it (`TokenClock`). In a batch,
    `row_offsets` holds each row's count (negative while a left-padded row is still in its
    padding) and `offset` the largest: use `positions()` for absolute positions per row.
    """

    name: str
    layer: int
    offset: int = 0
    is_prefill: bool = True
    length: int = 0
    row_offsets: Optional[mx.array] = None  # (B,)

    @property
    def kind(self) -> str:
        return self.name.rsplit("_", 1)[0]

    def positions(self) -> mx.array:
        """Absolute positions of this forward's tokens: `(1, T)`, or `(B, T)` in a padded batch."""
        steps = mx.arange(self.length)
        if self.row_offsets is None:
            return (steps + self.offset)[None]
        return self.row_offsets[:, None] + steps[None]


Hook = Callable[[mx.array, HookContext], Union[mx.array, None]]


def cache_offsets(cache: Any) -> tuple[int, Optional[mx.array]]:
    """(tokens already consumed, per-row offsets or None) read from one mlx-lm cache entry:
    its KV offset (of the KV half of a `CacheList`), else the position mlux stamped on it
    after its last forward (`mark_position`), else 0."""
    if cache is None:
        return 0, None
    if hasattr(cache, "caches"):  # CacheList (e.g. conv/SSM state + KV): the KV half counts
        cache = next((c for c in cache.caches if hasattr(c, "offset")), cache.caches[0])
    offset = getattr(cache, "offset", None)
    if offset is None:  # state-space / conv state: no count of its own
        stamp = getattr(cache, "_mlux_position", (0, None))
        return stamp
    if isinstance(offset, mx.array):  # Batch*KVCache: per-row offsets, int slot index aside
        slots = getattr(cache, "_offset", None)
        if slots is None:
            slots = getattr(cache, "_idx", 0)
        return int(slots), offset
    return int(offset), None


def cache_start(cache: Optional[Sequence[Any]]) -> tuple[int, Optional[mx.array]]:
    """Where the next token of a prompt cache (mlx-lm's per-layer list) goes: the largest count
    over its entries, KV offsets first (state-space entries count only what mlux stamped)."""
    if not cache:
        return 0, None
    counts = [cache_offsets(c) for c in cache]
    return max(counts, key=lambda c: c[0])


def mark_position(cache: Optional[Sequence[Any]], offset: int,
                  row_offsets: Optional[mx.array]) -> None:
    """Stamp every entry of a cache with the count it has consumed: state-space, conv and
    linear-attention states carry none of their own."""
    for c in cache or ():
        for entry in getattr(c, "caches", (c,)):
            entry._mlux_position = (offset, row_offsets)


class TokenClock:
    """The one source of the position hooks see: set by whoever runs a forward (the decoder,
    prefill, capture) for all blocks at once, never read from a block's own cache. Unset (a plain
    mlx-lm call), each block falls back to its cache's count (`plain`)."""

    __slots__ = ("offset", "row_offsets", "active", "first", "last")

    def __init__(self) -> None:
        self.offset: Optional[int] = None
        self.row_offsets: Optional[mx.array] = None  # (B,)
        self.active = 0  # hooks installed anywhere in the model
        self.first = 0  # the first block a forward runs here
        self.last: tuple[int, Optional[mx.array]] = (0, None)

    def plain(self, layer: int, cache: Any, length: int) -> tuple[int, Optional[mx.array]]:
        """A plain mlx-lm call's position at one block (every block counts while hooks are
        installed): its cache's count (KV offset, else the stamp, advanced here by the `length`
        tokens the block is about to consume), never less than the count read before it in this
        forward, which a block without a cache of its own (KV shared, no attention) or with one
        it never advances (NAS linear blocks) takes."""
        if layer == self.first:
            self.last = (0, None)
        if cache is None:
            return self.last
        own = cache_offsets(cache)
        self.last = offset, rows = own if own[0] >= self.last[0] else self.last
        mark_position([cache], offset + length, None if rows is None else rows + length)
        return self.last

    def set(self, offset: Optional[int], row_offsets: Optional[mx.array]
            ) -> tuple[Optional[int], Optional[mx.array]]:
        """Declare the position of column 0 (`normalise_start`'s largest row, and each row's
        or None); returns the old value."""
        old = (self.offset, self.row_offsets)
        self.offset, self.row_offsets = offset, row_offsets
        return old


Start = Union[int, Sequence[int], mx.array, None]


def normalise_start(start: Start) -> tuple[Optional[int], Optional[list[int]]]:
    """(the largest row's position, each row's or None when there is one) of a start."""
    if start is None or isinstance(start, int):
        return start, None
    rows = [int(r) for r in (start.tolist() if isinstance(start, mx.array) else start)]
    return max(rows), (rows if len(rows) > 1 else None)


def _find_cache(args: tuple, kwargs: dict) -> Any:
    if "cache" in kwargs:
        return kwargs["cache"]
    for a in args[1:]:  # any mlx-lm cache: KV, Arrays (state-space / conv), CacheList
        if hasattr(a, "update_and_fetch") or hasattr(a, "caches") or hasattr(a, "is_trimmable"):
            return a
    return None


def _hidden(args: tuple, kwargs: dict) -> Any:
    """A block's input hidden state: its first positional argument, or (gptj calls
    `block(inputs=h, mask=..., cache=...)`) its first keyword array other than the mask."""
    if args:
        return args[0]
    return next((v for k, v in kwargs.items()
                 if k != "mask" and isinstance(v, mx.array) and v.ndim >= 3), None)


def _length(x: Any, stream_axis: Optional[int]) -> int:
    """Tokens in a block's input: axis 1 of (B, T, D), or of (B, T, S, D) once the streams'
    axis is moved next to D."""
    if not hasattr(x, "shape"):
        return 0
    if stream_axis is not None and len(x.shape) == 4:
        x = mx.moveaxis(x, stream_axis, 2)
    return int(x.shape[1])


class BlockFrame:
    """Per-block state shared by a block's wrappers: how many hooks are live, and the offsets of
    the forward pass currently running (set by the block wrapper, read by its sub-wrappers)."""

    __slots__ = ("active", "clock", "offset", "row_offsets", "length")

    def __init__(self, clock: TokenClock) -> None:
        self.active = 0
        self.clock = clock
        self.offset = 0
        self.row_offsets: Optional[mx.array] = None
        self.length = 0


def _apply_hooks(hooks: list[Hook], x: mx.array, ctx: HookContext) -> mx.array:
    for hook in tuple(hooks):
        y = hook(x, ctx)
        if y is None:
            continue
        if not isinstance(y, mx.array):
            raise HookError(
                f"hook {getattr(hook, '__name__', hook)!r} at {ctx.name} returned "
                f"{type(y).__name__}; a hook must return an mx.array of shape {tuple(x.shape)} "
                "or None"
            )
        if y.shape != x.shape:
            raise HookError(
                f"hook {getattr(hook, '__name__', hook)!r} at {ctx.name} returned shape "
                f"{tuple(y.shape)}; expected {tuple(x.shape)} (the activation's shape)"
            )
        x = y if y.dtype == x.dtype else y.astype(x.dtype)
    return x


class HookWrapper(nn.Module):
    """Stands in the slot of a decoder block (hook point `residuals_i`) or of its attention
    (`attention_i`) / MLP (`mlp_i`) submodule, and runs the hooks installed on that point."""

    def __init__(self, module: nn.Module, name: str, layer: int, frame: BlockFrame, *,
                 stream_axis: Optional[int] = None) -> None:
        # Module.__init__ is skipped on purpose: `_training`, `_no_grad` stay the wrapped module's.
        dict.__init__(self)
        object.__setattr__(self, "_mlux_module", module)
        object.__setattr__(self, "_mlux_name", name)
        object.__setattr__(self, "_mlux_layer", layer)
        object.__setattr__(self, "_mlux_frame", frame)
        object.__setattr__(self, "_mlux_hooks", [])
        object.__setattr__(self, "_mlux_is_block", name.startswith("residuals_"))
        # Set for blocks carrying several residual streams: the streams' axis in the output.
        object.__setattr__(self, "_mlux_stream_axis", stream_axis)

    @property
    def wrapped(self) -> nn.Module:
        return self._mlux_module

    @property
    def hook_name(self) -> str:
        return self._mlux_name

    def add_hook(self, hook: Hook) -> None:
        self._mlux_hooks.append(hook)
        self._mlux_frame.active += 1
        self._mlux_frame.clock.active += 1

    def remove_hook(self, hook: Hook) -> None:
        hooks = self._mlux_hooks
        for i in range(len(hooks) - 1, -1, -1):
            if hooks[i] is hook:
                del hooks[i]
                self._mlux_frame.active -= 1
                self._mlux_frame.clock.active -= 1
                return

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        frame = self._mlux_frame
        if not frame.active:  # a block still counts positions in a plain call while hooks exist
            clock = frame.clock
            if not (self._mlux_is_block and clock.active and clock.offset is None):
                return self._mlux_module(*args, **kwargs)
        elif not (self._mlux_is_block or self._mlux_hooks):
            return self._mlux_module(*args, **kwargs)
        if self._mlux_is_block:
            clock = frame.clock
            frame.length = _length(_hidden(args, kwargs), self._mlux_stream_axis)
            if clock.offset is not None:  # declared by mlux's forward
                frame.offset, frame.row_offsets = clock.offset, clock.row_offsets
            else:  # a plain mlx-lm call: read before the block runs
                frame.offset, frame.row_offsets = clock.plain(
                    self._mlux_layer, _find_cache(args, kwargs), frame.length)
        out = self._mlux_module(*args, **kwargs)
        if not self._mlux_hooks:
            return out
        ctx = HookContext(
            name=self._mlux_name,
            layer=self._mlux_layer,
            offset=frame.offset,
            is_prefill=frame.length > 1 or frame.offset == 0,
            length=frame.length,
            row_offsets=frame.row_offsets,
        )
        if isinstance(out, tuple):  # some attention modules return (output, extras)
            return (self._hooked(out[0], ctx), *out[1:])
        return self._hooked(out, ctx)

    def _hooked(self, x: mx.array, ctx: HookContext) -> mx.array:
        axis = self._mlux_stream_axis
        if axis is None:
            return _apply_hooks(self._mlux_hooks, x, ctx)
        # Several residual streams: hooks see their mean (B, T, D), and what a hook changes
        # is added to every stream, so the mean moves by exactly that change.
        mean = x.mean(axis=axis)
        y = _apply_hooks(self._mlux_hooks, mean, ctx)
        if y is mean:
            return x
        return x + mx.expand_dims(y - mean, axis).astype(x.dtype)

    # -- transparent proxy: attributes ------------------------------------------------------
    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105
        # `isinstance(layer, FullAttentionDecoderLayer)` in model code (olmo_hybrid) must still
        # hold for a wrapped block; `type(wrapper)` stays HookWrapper.
        return type(object.__getattribute__(self, "_mlux_module"))

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_mlux_"):
            raise AttributeError(key)
        return getattr(object.__getattribute__(self, "_mlux_module"), key)

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_mlux_"):
            object.__setattr__(self, key, value)
        else:
            setattr(self._mlux_module, key, value)

    def __delattr__(self, key: str) -> None:
        delattr(self._mlux_module, key)

    # -- transparent proxy: the dict interface nn.Module's tree walks use ---------------------
    def __getitem__(self, key: Any) -> Any:
        return self._mlux_module[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._mlux_module[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._mlux_module[key]

    def __contains__(self, key: object) -> bool:
        return key in self._mlux_module

    def __iter__(self):  # noqa: ANN204
        return iter(self._mlux_module)

    def __len__(self) -> int:
        return len(self._mlux_module)

    def keys(self):  # noqa: ANN201
        return self._mlux_module.keys()

    def values(self):  # noqa: ANN201
        return self._mlux_module.values()

    def items(self):  # noqa: ANN201
        return self._mlux_module.items()

    def get(self, key: Any, default: Any = None) -> Any:
        return self._mlux_module.get(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        return self._mlux_module.pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._mlux_module.setdefault(key, default)

    def __repr__(self) -> str:
        return f"HookWrapper[{self._mlux_name}]({self._mlux_module!r})"
