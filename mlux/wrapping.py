"""Putting `HookWrapper`s into a model's block slots (and around each block's attention / MLP
submodule) and taking them out again: the hook points a `HookedModel` owns."""

from __future__ import annotations

from .arch import Architecture, child, set_child
from .hooks import BlockFrame, HookWrapper, TokenClock

__all__ = ["install_wrappers", "remove_wrappers"]


def install_wrappers(arch: Architecture, clock: TokenClock
                     ) -> tuple[dict[str, HookWrapper], set[str], TokenClock]:
    """Wrap every local block and its submodules; returns (hook point -> wrapper, the names of
    points other ranks run, the clock the wrappers read). A model wrapped before (by another
    `HookedModel`) keeps its wrappers and their clock."""
    points: dict[str, HookWrapper] = {}
    remote: set[str] = set()
    blocks = arch.blocks
    local = set(arch.local_layers)
    for i in range(arch.num_layers):
        if i not in local:  # run by another rank: accepted as a name, never fires here
            remote.update(f"{kind}_{i}" for kind, name in (
                ("residuals", ""), ("attention", arch.attention_names[i]),
                ("mlp", arch.mlp_names[i])) if name is not None)
            continue
        block = blocks[i]
        if isinstance(block, HookWrapper):  # wrapped before (another HookedModel): reuse
            frame = block._mlux_frame
            clock = frame.clock
        else:
            frame = BlockFrame(clock)
            block = blocks[i] = HookWrapper(block, f"residuals_{i}", i, frame,
                                            stream_axis=arch.stream_axis)
        points[f"residuals_{i}"] = block
        inner = block.wrapped
        for kind, name in (("attention", arch.attention_names[i]), ("mlp", arch.mlp_names[i])):
            if name is None:
                continue
            sub = child(inner, name)
            if not isinstance(sub, HookWrapper):
                sub = HookWrapper(sub, f"{kind}_{i}", i, frame)
                set_child(inner, name, sub)
            points[f"{kind}_{i}"] = sub
    clock.first = min(local, default=0)
    return points, remote, clock


def remove_wrappers(arch: Architecture) -> None:
    """Put the original modules back in their slots."""
    blocks = arch.blocks
    for i in arch.local_layers:
        block = blocks[i]
        if isinstance(block, HookWrapper):
            inner = block.wrapped
            for name in (arch.attention_names[i], arch.mlp_names[i]):
                if name is not None and isinstance(child(inner, name), HookWrapper):
                    set_child(inner, name, child(inner, name).wrapped)
            blocks[i] = inner
