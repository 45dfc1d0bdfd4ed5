"""`HookedModel`: an mlx-lm model with hook points on every decoder block, attention and MLP."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from .arch import Architecture, detect_architecture, hidden_size_of
from .distributed import Sharding, detect_sharding
from .hooks import (
    Hook,
    HookWrapper,
    Start,
    TokenClock,
    cache_start,
    mark_position,
    normalise_start,
)
from .inputs import (
    Inputs,
    RowGroup,
    TokenBatch,
    chat_ids,
    left_pad,
    make_batch_cache,
    padded_batch_problem,
    to_token_batch,
    warn_if_unknown,
)
from .layers import LayerSpec, expand_layer_specs, hook_point_names
from .loading import load_model
from .model_configs import ModelConfig, infer_model_config
from .wrapping import install_wrappers, remove_wrappers

__all__ = ["HookedModel", "HookSpec"]


class _Stop(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by `capture`'s last recording hook to end the forward pass early."""

HookSpec = Union[Mapping[str, Hook], Iterable[tuple[str, Hook]]]


class HookedModel:
    """Wraps a loaded mlx-lm model in place; plain mlx-lm calls keep working on `model`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, model_id: Optional[str] = None,
                 group: Any = None):
        """`group`: the mx.distributed group a pipeline-sharded model is split over (default:
        the world group); a model sharded by mlx-lm is detected, see `sharding`."""
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id or _model_id_of(model)
        self.arch: Architecture = detect_architecture(model)
        self.num_layers = self.arch.num_layers
        self.hidden_size = hidden_size_of(model, self.arch.blocks)
        # None for a model this process holds whole; else how it is sharded across ranks
        self.sharding: Optional[Sharding] = detect_sharding(model, self.arch.blocks_owner,
                                                            self.arch.blocks, group)
        self._points: dict[str, HookWrapper] = {}
        self._remote: set[str] = set()  # hook points of blocks other ranks run
        self._padded_batch_ok: Optional[bool] = None
        # why the probe of `supports_padded_batch` failed ("" until it has, or if it passed)
        self.padded_batch_reason = ""
        # Steering added to every row mlux's decoder starts (`SteeringVector.apply`).
        self.ambient_steering: list[Any] = []
        self._config = None
        self.clock = TokenClock()  # the position every hook sees, declared per forward
        self._unknown_warned = False  # the mostly-<unk> prompt warning is given once per model
        self._install_wrappers()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str, **load_kwargs: Any) -> HookedModel:
        """Load through `mlx_lm.load`: a local model directory, a hub id, or a built-in name."""
        model, tokenizer = load_model(path_or_repo, **load_kwargs)
        return cls(model, tokenizer, model_id=path_or_repo)

    def _install_wrappers(self) -> None:
        self._points, self._remote, self.clock = install_wrappers(self.arch, self.clock)

    def unwrap(self) -> nn.Module:
        """Put the original modules back in their slots and return the plain model."""
        remove_wrappers(self.arch)
        self._points.clear()
        self._remote.clear()
        return self.model

    # -- facts ----------------------------------------------------------------------------------
    @property
    def hook_points(self) -> list[str]:
        return [n for n in hook_point_names(self.num_layers)
                if n in self._points or n in self._remote]

    @property
    def local_layers(self) -> list[int]:
        """The blocks this process runs, in global numbering: all of them unless the model is
        pipeline-sharded (then hooks on the other blocks are accepted and run on their owner)."""
        return self.arch.local_layers

    @property
    def config(self) -> ModelConfig:
        if self._config is None:
            self._config = infer_model_config(self)
        return self._config

    @property
    def model_type(self) -> str:
        return self.arch.model_type

    @property
    def vocab_size(self) -> Optional[int]:
        args = getattr(self.model, "args", None)
        return getattr(args, "vocab_size", None)

    @property
    def quantization(self) -> Optional[dict[str, int]]:
        """`{"bits", "group_size"}` of the first quantized layer, or None for a float model."""
        for m in self.model.modules():
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                return {"bits": int(m.bits), "group_size": int(m.group_size)}
        return None

    @property
    def dtype(self) -> mx.Dtype:
        """The activation dtype: that of the first float weight that is not a quant scale."""
        for k, v in tree_flatten(self.model.parameters()):
            if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(("scales", "biases")):
                return v.dtype
        return mx.float32

    def expand_layer_specs(self, specs: LayerSpec) -> list[str]:
        return expand_layer_specs(specs, self.num_layers, hidden_size=self.hidden_size)

    def tokenize(self, inputs: Inputs) -> TokenBatch:
        batch = to_token_batch(self.tokenizer, inputs, self.vocab_size)
        if not self._unknown_warned and (isinstance(inputs, str) or (
                isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str))):
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            self._unknown_warned = warn_if_unknown(self.tokenizer, texts, batch, self.model_id)
        return batch

    def encode_chat(self, messages: Union[str, Sequence[Mapping[str, str]]]) -> list[int]:
        """Token ids of a chat, ready for the assistant's turn: a prompt string is one user turn;
        else `[{"role", "content"}, ...]`. The one chat route (extraction, collection, serve,
        explorer, sweeps): ids straight from the tokenizer's `apply_chat_template`."""
        return chat_ids(self.tokenizer, messages, self.model_id)

    # -- hooks ----------------------------------------------------------------------------------
    def _normalise_hooks(self, hooks: Optional[HookSpec]) -> list[tuple[str, Hook]]:
        if hooks is None:
            return []
        pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
        out = []
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(f"hooks must be a dict {{name: hook}} or (name, hook) pairs; "
                                 f"got {pair!r}")
            spec, fn = pair
            if not callable(fn):
                raise ValueError(f"hook for {spec!r} is not callable: {fn!r}")
            for name in self.expand_layer_specs(spec):
                if name in self._remote:
                    continue  # another rank runs this block and its hooks
                if name not in self._points:
                    raise ValueError(f"hook point {name!r} does not exist in this "
                                     f"{self.model_type} model (no submodule found there)")
                out.append((name, fn))
        return out

    @contextlib.contextmanager
    def hooks(self, hooks: Optional[HookSpec]) -> Iterator[HookedModel]:
        """Install hooks for the duration of the block; always removed on exit, nests."""
        pairs = self._normalise_hooks(hooks)
        installed: list[tuple[str, Hook]] = []
        try:
            for name, fn in pairs:
                self._points[name].add_hook(fn)
                installed.append((name, fn))
            yield self
        finally:
            for name, fn in reversed(installed):
                self._points[name].remove_hook(fn)

    @contextlib.contextmanager
    def _hooks_suspended(self) -> Iterator[None]:
        frames = {id(w._mlux_frame): w._mlux_frame for w in self._points.values()}.values()
        saved = [(f, f.active) for f in (*frames, self.clock)]  # the clock counts them all
        try:
            for f, _ in saved:
                f.active = 0
            yield
        finally:
            for f, active in saved:
                f.active = active

    def active_hooks(self) -> dict[str, int]:
        return {n: len(w._mlux_hooks) for n, w in self._points.items() if w._mlux_hooks}

    # -- running --------------------------------------------------------------------------------
    def supports_padded_batch(self) -> bool:
        """Does this architecture run left-padded rows exactly as it runs each row alone?

        Probed once with three rows of different lengths, against the rows run one by one: some
        mlx-lm models fail on batch masks, and a few broadcast them wrongly without failing.
        """
        if self._padded_batch_ok is None:
            with self._hooks_suspended():
                self.padded_batch_reason = padded_batch_problem(self.model) or ""
            self._padded_batch_ok = not self.padded_batch_reason
        return self._padded_batch_ok

    def split_batch(self, batch: TokenBatch, *, cache: bool = False) -> list[RowGroup]:
        """How a left-padded batch runs: as one masked batch with batch caches, or - the one
        fallback, for architectures that can't run padded batches - each row alone, unpadded.

        `cache=True` gives every group a fresh cache to decode on; otherwise only padded
        batches get one (for their mask).
        """
        rows = list(range(batch.tokens.shape[0]))
        if not batch.is_padded and not cache:
            return [RowGroup(rows, batch.tokens, None)]
        if len(rows) == 1:  # a lone row runs on mlx-lm's plain cache, as mlx-lm runs it
            return [RowGroup(rows, batch.tokens, make_prompt_cache(self.model))]
        if self.supports_padded_batch():
            return [RowGroup(rows, batch.tokens, make_batch_cache(self.model, batch.left_padding),
                             [-p for p in batch.left_padding])]
        return [RowGroup([i], batch.tokens[i : i + 1, pad:],
                         make_prompt_cache(self.model) if cache else None)
                for i, pad in enumerate(batch.left_padding)]

    def _groups(self, batch: TokenBatch, cache: Any) -> list[RowGroup]:
        """How `forward` / `_record` run a batch: on a caller's cache as one group from that
        cache's position, else as `split_batch` decides."""
        if cache is None:
            return self.split_batch(batch)
        return [RowGroup(list(range(batch.tokens.shape[0])), batch.tokens, cache,
                         _start_of(cache))]

    def forward_at(self, tokens: mx.array, cache: Any, start: Start = 0) -> mx.array:
        """The one way mlux runs the model: logits of `tokens` `(B, T)` on `cache`, with every
        hook told that column 0 sits at absolute position `start` (one int, or one per row),
        whatever kind of cache each block holds; the cache is stamped with where it now is."""
        offset, rows = normalise_start(start)
        per_row = None if rows is None else mx.array(rows)  # (B,)
        old = self.clock.set(offset, per_row)
        try:
            logits = self.model(tokens, cache=cache)
        finally:
            self.clock.set(*old)
        if cache is not None:
            t = tokens.shape[1]
            mark_position(cache, offset + t, None if per_row is None else per_row + t)
        return logits

    def forward(self, inputs: Union[Inputs, TokenBatch], *, cache: Any = None) -> mx.array:
        """Logits `(B, T, V)`. Padded batches run masked, so each row equals its own run."""
        batch = inputs if isinstance(inputs, TokenBatch) else self.tokenize(inputs)
        groups = self._groups(batch, cache)
        return self._join(batch, [self.forward_at(g.tokens, g.cache, g.start) for g in groups])

    @staticmethod
    def _join(batch: TokenBatch, parts: list[mx.array]) -> mx.array:
        """Per-group outputs back into one batch; outputs that kept their group's own length
        (axis 1) are left-padded to the batch's."""
        if len(parts) == 1:
            return parts[0]
        if len({p.shape[1:] for p in parts}) > 1:
            parts = [left_pad(p, batch.tokens.shape[1]) for p in parts]
        return mx.concatenate(parts, axis=0)

    def __call__(self, inputs: Union[Inputs, TokenBatch], *, cache: Any = None) -> mx.array:
        return self.forward(inputs, cache=cache)

    def run_with_hooks(
        self, inputs: Inputs, hooks: Optional[HookSpec], *, cache: Any = None
    ) -> mx.array:
        """Logits `(B, T, V)` of one forward with `hooks` installed."""
        with self.hooks(hooks):
            logits = self.forward(inputs, cache=cache)
            mx.eval(logits)
        return logits

    def run_with_cache(
        self,
        inputs: Inputs,
        names: Optional[LayerSpec] = None,
        *,
        hooks: Optional[HookSpec] = None,
        cache: Any = None,
        reduce: Optional[Callable[[mx.array], mx.array]] = None,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        """Logits and the activations at `names` (default: every residual), evaluated.

        `hooks` run before the capture (capture sees their effect); `reduce` maps each captured
        `(B, T, D)` array before it is kept (e.g. `lambda x: x[:, -1]`) to save memory.
        Use `capture` when the logits are not needed: it stops at the deepest hook point.
        """
        logits, acts = self._record(inputs, names, hooks, reduce, cache, stop_early=False)
        assert logits is not None
        return logits, acts

    def capture(
        self,
        inputs: Inputs,
        names: Optional[LayerSpec] = None,
        *,
        hooks: Optional[HookSpec] = None,
        reduce: Optional[Callable[[mx.array], mx.array]] = None,
    ) -> dict[str, mx.array]:
        """The activations at `names` (default: every residual), evaluated, from blocks run
        only up to the deepest requested hook point: no final norm, no LM head, no KV cache.

        Hooks placed after that point never run. `reduce` sees `(B, T, D)` of the left-padded
        batch, or `(1, T_i, D)` per row on architectures that run rows alone; outputs that keep
        their row's length are left-padded back to the batch's."""
        return self._record(inputs, names, hooks, reduce, None, stop_early=True)[1]

    def _record(self, inputs: Inputs, names: Optional[LayerSpec], hooks: Optional[HookSpec],
                reduce: Optional[Callable[[mx.array], mx.array]], cache: Any, *,
                stop_early: bool) -> tuple[Optional[mx.array], dict[str, mx.array]]:
        names = self.expand_layer_specs("all" if names is None else names)
        local = [n for n in names if n not in self._remote]
        pipelined = self.sharding is not None and self.sharding.pipelined
        # A pipeline stage's blocks wait on the stage before: every rank runs the whole model
        # (the same collectives on every rank), then the activations go from owners to all.
        stop_early = stop_early and not pipelined
        store: dict[str, mx.array] = {}

        def record(name: str) -> Hook:
            def hook(x: mx.array, ctx: Any) -> None:
                store[name] = x if reduce is None else reduce(x)
                if stop_early and len(store) == len(names):
                    raise _Stop  # every activation asked for is in: skip the rest of the model

            return hook

        batch = self.tokenize(inputs)
        groups = self._groups(batch, cache)
        logits, parts = [], []
        with self.hooks(hooks), self.hooks([(n, record(n)) for n in local]):
            for group in groups:
                store.clear()
                try:
                    logits.append(self.forward_at(group.tokens, group.cache, group.start))
                except _Stop:
                    pass
                missing = [n for n in local if n not in store]
                if missing:
                    raise RuntimeError(f"hook points {missing} did not fire in {self.model_type}")
                mx.eval(logits, store)
                parts.append(self.sharding.gather(names, store) if pipelined else dict(store))
        acts = {n: self._join(batch, [p[n] for p in parts]) for n in names}
        return (self._join(batch, logits) if logits else None), acts

    def __repr__(self) -> str:
        q = self.quantization
        precision = f"{q['bits']}-bit" if q else str(self.dtype)
        return (f"HookedModel({self.model_id!r}, {self.model_type}, layers={self.num_layers}, "
                f"hidden={self.hidden_size}, {precision})")


def _start_of(cache: Any) -> Union[int, list[int]]:
    """A caller's cache's position: one int, or one per row of a batch cache."""
    offset, rows = cache_start(cache)
    return offset if rows is None else [int(r) for r in rows.tolist()]


def _model_id_of(model: nn.Module) -> Optional[str]:
    args = getattr(model, "args", None)
    for key in ("name_or_path", "_name_or_path"):
        value = getattr(args, key, None)
        if isinstance(value, str) and value:
            return value
    return None
