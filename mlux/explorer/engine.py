"""The explorer's model work: baseline and steered rows decoded together from one prefill, the
projection of generated text onto a vector, and the projection layer sweep.

Nothing here locks: the blueprint holds the app's model lock around every call.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import mlx.core as mx

from mlux.batch import Steering, merge_prefills, row_steering_hooks, stream_batch
from mlux.generate import PREFILL_CHUNK, prefill_with_cache, stream_from_cache
from mlux.inputs import make_batch_cache
from mlux.interventions import steering_hooks
from mlux.model import HookedModel
from mlux.steering import apply_chat
from mlux.vectors import SteeringVector

__all__ = [
    "RowText",
    "SweepFn",
    "generated_projections",
    "projection_sweep",
    "prompt_tokens",
    "stream_rows",
    "token_projections",
    "unit_vectors",
]

# fn(hooked, vector, tokens, *, layers, alpha, max_tokens) -> JSON-able dict with a "layers" list
SweepFn = Callable[..., dict[str, Any]]


def prompt_tokens(hooked: HookedModel, prompt: str, chat: bool) -> list[int]:
    text = apply_chat(hooked, [prompt])[0] if chat else prompt
    return hooked.tokenize(text).tokens[0].tolist()


def _batched_start(hooked: HookedModel, tokens: list[int], rows: Sequence[Optional[Steering]],
                   positions: str) -> Optional[tuple[list[Any], mx.array, list[Any]]]:
    """(batch cache, last logits (B, V), row hooks), or None when this model can't batch."""
    if not hooked._supports_padded_batch():
        return None
    n, b = len(tokens), len(rows)
    hooks = row_steering_hooks(hooked, rows, [n] * b)
    if positions == "generated":  # the prompt is unsteered: prefill once, share it
        cache, logits = prefill_with_cache(hooked, tokens)
        try:
            return merge_prefills([cache] * b), mx.repeat(logits[None], b, axis=0), hooks
        except ValueError:  # e.g. rotating caches that can't merge
            return None
    cache = make_batch_cache(hooked.model, [0] * b)
    if cache is None:
        return None
    batch = mx.array([tokens] * b)
    with hooked.hooks(hooks):
        for start in range(0, n, PREFILL_CHUNK):
            out = hooked.model(batch[:, start : start + PREFILL_CHUNK], cache=cache)
            mx.eval(out, [c.state for c in cache])
    return cache, out[:, -1], hooks


def stream_rows(
    hooked: HookedModel,
    tokens: list[int],
    rows: Sequence[Optional[Steering]],
    *,
    positions: str,
    max_tokens: int,
    temperature: float = 0.0,
    seed: Optional[int] = None,
) -> Iterator[dict[int, int]]:
    """Yield `{row: token}` per decoding step. Rows decode as one batch when the model allows
    it, else one after another; either way closing the generator removes every hook."""
    start = _batched_start(hooked, tokens, rows, positions)
    if start is not None:
        cache, logits, hooks = start
        seeds = None if seed is None else [seed] * len(rows)  # same luck for every row
        steps = stream_batch(hooked, cache, logits, max_tokens=max_tokens, hooks=hooks,
                             temperature=temperature, seed=seeds)
        with contextlib.closing(steps):
            for step in steps:
                tokens = {r: t for r, t in enumerate(step) if t is not None}
                if tokens:  # a step where the last rows stopped carries no token
                    yield tokens
        return
    shared: Optional[tuple[list[Any], mx.array]] = None
    for r, row in enumerate(rows):
        hooks = None if row is None else steering_hooks(
            row.per_layer(), row.alpha, positions=positions, prompt_length=len(tokens))
        if hooks is not None and positions == "all":
            cache, logits = prefill_with_cache(hooked, tokens, hooks=hooks)
        else:
            shared = shared or prefill_with_cache(hooked, tokens)
            cache, logits = shared
        gen = stream_from_cache(hooked, cache, logits, max_tokens=max_tokens, hooks=hooks,
                                temperature=temperature, seed=seed)
        with contextlib.closing(gen):
            for token in gen:
                yield {r: token}


class RowText:
    """Incremental detokenisation of one row: each token's new text, held back while the
    decoded text ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        full = self.tokenizer.decode(self.ids)
        if full.endswith("\ufffd"):
            self.pieces.append("")
            return ""
        piece = full[len(self.text):] if full.startswith(self.text) else full
        self.text = full
        self.pieces.append(piece)
        return piece


def unit_vectors(vector: SteeringVector, layers: Sequence[int]) -> dict[int, mx.array]:
    """Unit-norm directions (a zero direction stays zero, so its projections read 0)."""
    out = {}
    for layer in layers:
        d = vector[layer].astype(mx.float32)
        norm = float(mx.linalg.norm(d).item())
        out[layer] = d / norm if norm > 0 else d
    return out


def _projector(store: dict[int, mx.array], layer: int, unit: mx.array
               ) -> Callable[[mx.array, Any], None]:
    def hook(x: mx.array, ctx: Any) -> None:
        store[layer] = x.astype(mx.float32) @ unit

    return hook


def token_projections(hooked: HookedModel, seqs: Sequence[list[int]],
                      units: Mapping[int, mx.array]) -> dict[int, list[list[float]]]:
    """Per layer and row: `residuals_layer . unit` at every position of the row, read with no
    steering installed (what the text itself carries, not what was added)."""
    out: dict[int, list[list[float]]] = {layer: [] for layer in units}
    groups = [list(seqs)] if hooked._supports_padded_batch() else [[s] for s in seqs]
    for group in groups:
        store: dict[int, mx.array] = {}
        batch = hooked.tokenize(group)
        with hooked.hooks([(f"residuals_{layer}", _projector(store, layer, units[layer]))
                           for layer in units]):
            mx.eval(hooked.forward(batch), store)
        for layer in units:
            for r, n in enumerate(batch.lengths):  # left-padded: a row's tokens end the batch
                out[layer].append(store[layer][r, store[layer].shape[1] - n :].tolist())
    return out


def generated_projections(hooked: HookedModel, tokens: list[int], gens: Sequence[list[int]],
                          units: Mapping[int, mx.array]) -> dict[int, list[list[float]]]:
    """Like `token_projections` over prompt + generation, keeping the generated positions."""
    full = token_projections(hooked, [tokens + g for g in gens], units)
    return {layer: [row[len(row) - len(g):] if g else [] for row, g in zip(rows, gens,
                                                                          strict=True)]
            for layer, rows in full.items()}


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def projection_sweep(hooked: HookedModel, vector: SteeringVector, tokens: list[int], *,
                     layers: Sequence[int], alpha: float, max_tokens: int) -> dict[str, Any]:
    """Per layer L: steer generated positions at L alone, then read how far the generated
    text projects onto the vector at L, against the unsteered baseline (one batch: row 0 is
    the baseline, row i+1 steers layers[i])."""
    rows = [None, *(Steering({lyr: vector[lyr]}, alpha, positions="generated") for lyr in layers)]
    gens: list[list[int]] = [[] for _ in rows]
    steps = stream_rows(hooked, tokens, rows, positions="generated", max_tokens=max_tokens)
    with contextlib.closing(steps):
        for step in steps:
            for r, token in step.items():
                gens[r].append(token)
    proj = generated_projections(hooked, tokens, gens, unit_vectors(vector, layers))
    norms = vector.norms
    out = []
    for i, layer in enumerate(layers):
        base, steered = _mean(proj[layer][0]), _mean(proj[layer][i + 1])
        out.append({"layer": layer, "norm": norms[layer], "baseline": base, "steered": steered,
                    "delta": None if base is None or steered is None else steered - base,
                    "text": hooked.tokenizer.decode(gens[i + 1])})
    return {"mode": "projection", "alpha": alpha, "layers": out,
            "baseline_text": hooked.tokenizer.decode(gens[0]),
            "metric": "mean projection of the generated tokens' residuals onto the unit "
                      "vector at each layer, read without steering"}
