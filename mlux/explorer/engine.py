"""The explorer's model work: baseline and steered rows decoded together from one prefill, the
projection of generated text onto a vector, and the projection layer sweep.

Nothing here locks: the blueprint holds the app's model lock around every call.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import mlx.core as mx

from mlux.generate import stream_rows as batch_stream_rows
from mlux.model import HookedModel
from mlux.steering import Steering
from mlux.vectors import SteeringVector

__all__ = [
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
    return hooked.encode_chat(prompt) if chat else hooked.tokenize(prompt).tokens[0].tolist()


def stream_rows(
    hooked: HookedModel,
    tokens: list[int],
    rows: Sequence[Optional[Steering]],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    seed: Optional[int] = None,
) -> Iterator[dict[int, int]]:
    """`{row: token}` per decoding step, from `mlux.generate.stream_rows` (one batch where the
    model allows it); every row gets the same seed, so rows differ by steering, not luck."""
    seeds = None if seed is None else [seed] * len(rows)
    steps = batch_stream_rows(hooked, tokens, rows, max_tokens=max_tokens,
                              temperature=temperature, seeds=seeds)
    with contextlib.closing(steps):
        for step in steps:
            step_tokens = {r: t for r, t in enumerate(step) if t is not None}
            if step_tokens:  # a step where the last rows stopped carries no token
                yield step_tokens


def unit_vectors(vector: SteeringVector, layers: Sequence[int]) -> dict[int, mx.array]:
    """Unit-norm directions (a zero direction stays zero, so its projections read 0)."""
    out = {}
    for layer in layers:
        d = vector[layer].astype(mx.float32)
        norm = float(mx.linalg.norm(d).item())
        out[layer] = d / norm if norm > 0 else d
    return out


def token_projections(hooked: HookedModel, seqs: Sequence[list[int]],
                      units: Mapping[int, mx.array]) -> dict[int, list[list[float]]]:
    """Per layer and row: `residuals_layer . unit` at every position of the row, read with no
    steering installed (what the text itself carries, not what was added)."""
    layers = list(units)
    basis = mx.stack([units[layer] for layer in layers], axis=1)  # (D, L)
    acts = hooked.capture(list(seqs), [f"residuals_{layer}" for layer in layers],
                          reduce=lambda x: x.astype(mx.float32) @ basis)  # (B, T, L) each
    width = max(len(s) for s in seqs)
    out: dict[int, list[list[float]]] = {}
    for k, layer in enumerate(layers):
        proj = acts[f"residuals_{layer}"][..., k].tolist()  # left-padded: a row ends the batch
        out[layer] = [row[width - len(s):] for row, s in zip(proj, seqs, strict=True)]
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
    steps = stream_rows(hooked, tokens, rows, max_tokens=max_tokens)
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
