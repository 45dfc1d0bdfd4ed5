"""What mlux promises on a model, checked against independent references: the unhooked model,
its own block outputs, a naive no-cache recompute loop, rows run alone.

Each check returns a `Outcome` (`ok`, `fallback` with the reason, `refused` with the reason, or
`fail` with what differed); `run_checks` runs them all on fresh tiny instances of one module.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from mlux.generate import generate_batch, prefill_with_cache, stream_from_cache
from mlux.hooks import HookContext
from mlux.info import padded_batch_fallback
from mlux.model import HookedModel
from mlux.steering import Steering, create_additive_hook, create_steering_hook

from .modules import tiny_model

__all__ = ["PROMPT", "WINDOWS", "Outcome", "check_batch_decode", "check_cache_windows",
           "check_decoding", "close", "run_checks"]

PROMPT = [5, 9, 13, 7, 21, 4, 30]
STEPS = 5  # decoded tokens per window check
# Every steering window (issue 28), plus an absolute-position additive hook.
WINDOWS: tuple[Any, ...] = ("all", "prompt", "generated", 3, (2, 9), "additive")


@dataclass
class Outcome:
    status: str  # "ok" | "fallback" | "refused" | "fail"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "fallback", "refused")

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


def close(a: mx.array, b: mx.array, rel: float = 1e-4) -> bool:
    """Equal up to float rounding, relative to the reference's scale (BLAS blocking differs
    between shapes)."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(mx.abs(b).max().item()))
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()) <= rel * scale


def _guard(fn: Callable[[], Outcome]) -> Outcome:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a crash is a result to record, not to raise
        where = traceback.extract_tb(e.__traceback__)[-1]
        return Outcome("fail", f"{type(e).__name__}: {str(e)[:160]} "
                               f"({where.filename.rsplit('/', 1)[-1]}:{where.lineno})")


class _Recorder:
    """Stands in a block slot of an *unwrapped* model and records what the block returns."""

    def __init__(self, block: nn.Module, out: list) -> None:
        self.block, self.out = block, out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        y = self.block(*args, **kwargs)
        # A copy: model code may assign into the returned array in place afterwards.
        self.out.append(mx.array(y[0] if isinstance(y, tuple) else y))
        return y

    def __getattr__(self, key: str) -> Any:
        return getattr(self.block, key)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 - model code may test isinstance(layer, ...)
        return type(self.block)


def _block_outputs(model: nn.Module, hooked: HookedModel, tokens: mx.array) -> list[mx.array]:
    """Each block's own output on `tokens`, recorded with mlux's wrappers out of the slots."""
    blocks = hooked.arch.blocks
    inner = [b.wrapped for b in blocks]
    outs: list[mx.array] = []
    try:
        for i, b in enumerate(inner):
            blocks[i] = _Recorder(b, outs)
        mx.eval(model(tokens))
    finally:
        for i in range(len(blocks)):
            blocks[i] = hooked._points[f"residuals_{i}"]
    return outs


def check_residuals(model: nn.Module, hooked: HookedModel, tokens: mx.array) -> Outcome:
    """`residuals_i` == the output block i itself returned in an unhooked forward."""
    ref = _block_outputs(model, hooked, tokens)
    if hooked.arch.stream_axis is not None:  # several streams: residuals_i is their mean
        ref = [r.mean(axis=hooked.arch.stream_axis) for r in ref]
    _, acts = hooked.run_with_cache(tokens, "all")
    if len(ref) != hooked.num_layers:
        return Outcome("fail", f"{len(ref)} block calls for {hooked.num_layers} blocks")
    bad = [i for i, r in enumerate(ref) if not close(acts[f"residuals_{i}"], r, 1e-5)]
    shape = tuple(acts["residuals_0"].shape)
    if bad:
        return Outcome("fail", f"residuals differ from the block outputs at layers {bad}")
    return Outcome("ok", f"shape {shape}")


def check_steering(hooked: HookedModel, tokens: mx.array, ref: mx.array) -> Outcome:
    """A steering hook moves the logits and leaves the blocks before it alone."""
    target = max(0, hooked.num_layers - 2)
    _, clean = hooked.run_with_cache(tokens, "all")
    # Random, not constant: a LayerNorm would remove a constant shift exactly.
    vec = 2.0 * mx.random.normal((hooked.hidden_size,), key=mx.random.key(3))
    logits, steered = hooked.run_with_cache(
        tokens, "all", hooks={f"residuals_{target}": create_steering_hook(vec, 1.0)})
    if close(logits, ref, 1e-6):
        return Outcome("fail", "steering did not move the logits")
    early = [j for j in range(target) if not mx.array_equal(steered[f"residuals_{j}"],
                                                             clean[f"residuals_{j}"]).item()]
    if early:
        return Outcome("fail", f"steering layer {target} changed earlier layers {early}")
    return Outcome("ok")


def check_capture(hooked: HookedModel, tokens: mx.array) -> Outcome:
    """`capture` of residuals_0 stops there: a hook on the last block never runs."""
    fired: list[int] = []
    last = f"residuals_{hooked.num_layers - 1}"
    acts = hooked.capture(tokens, ["residuals_0"], hooks={last: lambda x, c: fired.append(1)})
    _, full = hooked.run_with_cache(tokens, ["residuals_0"])
    if fired:
        return Outcome("fail", "the last block ran during capture of residuals_0")
    if not mx.array_equal(acts["residuals_0"], full["residuals_0"]).item():
        return Outcome("fail", "captured residuals_0 differs from run_with_cache")
    return Outcome("ok")


def check_padded_batch(hooked: HookedModel) -> Outcome:
    """Left-padded rows run as one batch equal each row alone, or the model falls back."""
    if not hooked.supports_padded_batch():
        return Outcome("fallback", f"rows run one by one: {padded_batch_fallback(hooked)}")
    rows = [[5, 9, 13], [7, 21, 4, 30, 11, 2], [8, 8]]
    logits, acts = hooked.run_with_cache(rows, ["residuals_1"])
    for i, row in enumerate(rows):
        lg, a = hooked.run_with_cache([row], ["residuals_1"])
        pad = logits.shape[1] - len(row)
        if not (close(logits[i, pad:], lg[0], 2e-5) and
                close(acts["residuals_1"][i, pad:], a["residuals_1"][0], 2e-5)):
            return Outcome("fail", f"padded row {i} differs from the row alone")
    return Outcome("ok", "one masked batch")


@contextlib.contextmanager
def _recording(hooked: HookedModel, out: list[mx.array]) -> Iterator[None]:
    """Record the last-position logits of every forward the decoder runs."""
    model = hooked.model

    class Tap:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            y = model(*args, **kwargs)
            out.append(y[:, -1])
            return y

        def __getattr__(self, key: str) -> Any:
            return getattr(model, key)

    hooked.model = Tap()  # type: ignore[assignment]
    try:
        yield
    finally:
        hooked.model = model


def _window(hooked: HookedModel, window: Any, n: int) -> tuple[Any, mx.array]:
    """The mlux hook for `window`, and by hand the `(T_max, D)` table of what it must add at
    each absolute position of the prompt and the decoded tokens."""
    total = n + STEPS
    t = mx.arange(total)[:, None]
    key = mx.random.key(7)
    if window == "additive":  # a different delta at every absolute position
        table = 2.0 * mx.random.normal((total, hooked.hidden_size), key=key)
        return create_additive_hook(table), table
    vec = 2.0 * mx.random.normal((hooked.hidden_size,), key=key)
    inside = {"all": t >= 0, "prompt": t < n - 1, "generated": t >= n - 1}.get(window)
    if inside is None:
        inside = (t >= window) if isinstance(window, int) else (t >= window[0]) & (t < window[1])
    hook = create_steering_hook(vec, 1.0, positions=window, prompt_length=n)
    return hook, mx.where(inside, vec, 0.0)


class _Adder:
    """Stands in a block slot: the block's output plus `table[t]` at position t (every stream of
    a multi-stream block), with no mlux code involved."""

    def __init__(self, block: nn.Module, table: mx.array, stream_axis: Optional[int]) -> None:
        self.block, self.table, self.axis = block, table, stream_axis

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        y = self.block(*args, **kwargs)
        out = y[0] if isinstance(y, tuple) else y
        length = out.shape[1] if self.axis is None else mx.moveaxis(out, self.axis, 2).shape[1]
        delta = self.table[:length]  # (T, D): a whole sequence from position 0
        if self.axis is not None:
            delta = mx.expand_dims(delta, self.axis - 1 if self.axis > 1 else 0)
        out = out + delta.astype(out.dtype)
        return (out, *y[1:]) if isinstance(y, tuple) else out

    def __getattr__(self, key: str) -> Any:
        return getattr(self.block, key)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105
        return type(self.block)


def _naive(hooked: HookedModel, seq: list[int], layer: int, table: mx.array) -> mx.array:
    """Last-position logits of the whole sequence in one forward, into a fresh cache (mlx-lm's
    gemma3n shares KV between layers only through the cache), steered by hand at `layer`."""
    blocks = hooked.arch.blocks
    blocks[layer] = _Adder(blocks[layer].wrapped, table, hooked.arch.stream_axis)
    try:
        logits = hooked.model(mx.array([seq]), cache=make_prompt_cache(hooked.model))[0, -1]
        mx.eval(logits)
    finally:
        blocks[layer] = hooked._points[f"residuals_{layer}"]
    return logits


def check_cache_windows(hooked: HookedModel, window: Any, *, chunk: Optional[int] = None,
                        hook: Optional[Callable[[mx.array, HookContext], Any]] = None,
                        layer: Optional[int] = None) -> Outcome:
    """Steered greedy decoding through mlux's decoder (KV-cached, optionally chunked prefill)
    equals a naive loop that recomputes the whole sequence each step and adds the window's
    deltas by hand: tokens and logits per step. `hook` replaces mlux's hook for the window
    (the reference stays the window's); `layer` defaults to the middle block."""
    n = len(PROMPT)
    layer = hooked.num_layers // 2 if layer is None else layer
    window_hook, table = _window(hooked, window, n)
    hooks = {f"residuals_{layer}": hook or window_hook}
    kwargs = {} if chunk is None else {"chunk_size": chunk}
    cache, first = prefill_with_cache(hooked, [PROMPT], hooks=hooks, **kwargs)
    seen: list[mx.array] = []
    with _recording(hooked, seen):
        tokens = list(stream_from_cache(hooked, cache, first, max_tokens=STEPS, hooks=hooks))
    cached = [first, *(s[0] for s in seen)]
    seq = list(PROMPT)
    for step in range(STEPS):
        naive = _naive(hooked, seq, layer, table)
        if not close(cached[step], naive):
            diff = float(mx.abs(cached[step] - naive).max().item())
            return Outcome("fail", f"logits differ from the naive loop at step {step} "
                                   f"(max |diff| {diff:.3g})")
        seq.append(int(mx.argmax(naive).item()))
        if step < len(tokens) and tokens[step] != seq[-1]:
            return Outcome("fail", f"token {step} differs from the naive loop")
    return Outcome("ok")


def run_checks(model_type: str, quantize: bool) -> dict[str, dict[str, str]]:
    """Every check on fresh tiny instances of `model_type` (fp32, or 4-bit)."""
    results: dict[str, dict[str, str]] = {}
    try:
        model, _ = tiny_model(model_type, quantize)
    except Exception as e:  # noqa: BLE001 - e.g. mlx-lm cannot quantize one of its layers
        return {"build": Outcome("fail", f"{type(e).__name__}: {str(e)[:200]}").as_dict()}
    tokens = mx.array([PROMPT])
    ref = model(tokens)
    mx.eval(ref)
    try:
        hooked = HookedModel(model, None)
    except ValueError as e:  # mlux refuses the architecture, naming why
        results["wrap"] = Outcome("refused", str(e)).as_dict()
        return results
    results["wrap"] = Outcome("ok", f"{hooked.num_layers} blocks at {hooked.arch.blocks_path}; "
                                    f"attention_i = {_mixers(hooked)}").as_dict()

    def noop() -> Outcome:
        logits = hooked.run_with_hooks(tokens, {p: (lambda x, c: x) for p in hooked.hook_points})
        return Outcome("ok" if mx.array_equal(logits, ref).item() else "fail",
                       "" if mx.array_equal(logits, ref).item() else "logits changed")

    results["noop"] = _guard(noop).as_dict()
    results["residuals"] = _guard(lambda: check_residuals(model, hooked, tokens)).as_dict()
    results["steering"] = _guard(lambda: check_steering(hooked, tokens, ref)).as_dict()
    results["capture"] = _guard(lambda: check_capture(hooked, tokens)).as_dict()
    results["padded_batch"] = _guard(lambda: check_padded_batch(hooked)).as_dict()
    for window in WINDOWS:
        name = f"cache_{window[0]}-{window[1]}" if isinstance(window, tuple) else f"cache_{window}"
        results[name] = _guard(lambda w=window: check_cache_windows(hooked, w)).as_dict()
    results["cache_chunked"] = _guard(
        lambda: check_cache_windows(hooked, "additive", chunk=3)).as_dict()
    results["batch_decode"] = _guard(lambda: check_batch_decode(hooked)).as_dict()
    results["decoding"] = _guard(lambda: check_decoding(hooked)).as_dict()
    return results


def check_batch_decode(hooked: HookedModel) -> Outcome:
    """`generate_batch` over prompts of different lengths, each row steered on its own
    generated tokens, equals each prompt generated alone (one batch or row by row)."""
    prompts = [[5, 9, 13], [7, 21, 4, 30, 11, 2], [8, 8, 40, 17]]
    vec = 2.0 * mx.random.normal((hooked.hidden_size,), key=mx.random.key(5))
    layer = hooked.num_layers // 2
    rows = [Steering(vec, alpha, layers=[layer], positions="generated")
            for alpha in (1.0, 0.0, -1.0)]
    together = generate_batch(hooked, prompts, max_tokens=STEPS, steering=rows)
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        if generate_batch(hooked, [prompt], max_tokens=STEPS, steering=[row])[0] != together[i]:
            return Outcome("fail", f"batched row {i} differs from the row decoded alone")
    return Outcome("ok")


def check_decoding(hooked: HookedModel, steps: int = 12, least: int = 4) -> Outcome:
    """The random model's greedy decoding is not degenerate (at least `least` distinct tokens
    in `steps`), so cache and window checks compare different tokens at every step."""
    cache, logits = prefill_with_cache(hooked, [PROMPT])
    tokens = list(stream_from_cache(hooked, cache, logits, max_tokens=steps))
    distinct = len(set(tokens))
    return Outcome("ok" if distinct >= least else "fail",
                   f"{distinct} distinct tokens in {steps} greedy steps")


def _mixers(hooked: HookedModel) -> str:
    names = sorted({str(n) for n in hooked.arch.attention_names})
    return "/".join(names)
