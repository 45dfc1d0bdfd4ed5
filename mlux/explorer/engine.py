"""The explorer's model work: baseline and steered rows decoded together from one prefill, the
projection of generated text onto a vector, and the projection layer sweep.

Nothing here locks or queues: the blueprint runs every call on the app's one model thread.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import mlx.core as mx

from mlux.generate import stream_rows as batch_stream_rows
from mlux.inputs import warn_if_unknown
from mlux.model import HookedModel
from mlux.steering import Steering
from mlux.vectors import SteeringVector

__all__ = [
    "SweepFn",
    "generated_projections",
    "last_token_norms",
    "projection_sweep",
    "prompt_tokens",
    "stream_rows",
    "token_projections",
    "token_readout",
    "unit_vectors",
]

# fn(hooked, vector, tokens, *, layers, alpha, max_tokens) -> JSON-able dict with a "layers" list
SweepFn = Callable[..., dict[str, Any]]


def prompt_tokens(hooked: HookedModel, prompt: str, chat: bool) -> list[int]:
    """The prompt's ids; a prompt mostly of unknown tokens warns on every request (the model
    itself warns once), for the page to show."""
    if chat:
        return hooked.encode_chat(prompt)
    batch = hooked.tokenize(prompt)
    warn_if_unknown(hooked.tokenizer, [prompt], batch, hooked.model_id)
    return batch.tokens[0].tolist()


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


def token_readout(hooked: HookedModel, seqs: Sequence[list[int]], units: Mapping[int, mx.array]
                  ) -> tuple[dict[int, list[list[float]]], dict[int, list[list[float]]]]:
    """Per layer and row, at every position of the row: `residuals_layer . unit` and the
    residual's norm, read with no steering installed (what the text itself carries, not what
    was added)."""
    layers = list(units)
    basis = mx.stack([units[layer] for layer in layers], axis=1)  # (D, L)

    def reduce(x: mx.array) -> mx.array:  # (B, T, L + 1): the projections, then the norm
        x = x.astype(mx.float32)
        return mx.concatenate([x @ basis, mx.linalg.norm(x, axis=-1, keepdims=True)], axis=-1)

    acts = hooked.capture(list(seqs), [f"residuals_{layer}" for layer in layers], reduce=reduce)
    width = max(len(s) for s in seqs)
    proj: dict[int, list[list[float]]] = {}
    norms: dict[int, list[list[float]]] = {}
    for k, layer in enumerate(layers):  # left-padded: a row ends the batch
        a = acts[f"residuals_{layer}"]
        proj[layer], norms[layer] = ([row[width - len(s):] for row, s in zip(
            part.tolist(), seqs, strict=True)] for part in (a[..., k], a[..., -1]))
    return proj, norms


def token_projections(hooked: HookedModel, seqs: Sequence[list[int]],
                      units: Mapping[int, mx.array]) -> dict[int, list[list[float]]]:
    """Per layer and row: `residuals_layer . unit` at every position (`token_readout`)."""
    return token_readout(hooked, seqs, units)[0]


def _generated(full: dict[int, list[list[float]]], gens: Sequence[list[int]]
               ) -> dict[int, list[list[float]]]:
    return {layer: [row[len(row) - len(g):] if g else [] for row, g in zip(rows, gens,
                                                                          strict=True)]
            for layer, rows in full.items()}


def generated_projections(hooked: HookedModel, tokens: list[int], gens: Sequence[list[int]],
                          units: Mapping[int, mx.array]) -> dict[int, list[list[float]]]:
    """Like `token_projections` over prompt + generation, keeping the generated positions."""
    return _generated(token_projections(hooked, [tokens + g for g in gens], units), gens)


def last_token_norms(hooked: HookedModel, tokens: list[int], layers: Sequence[int]
                     ) -> dict[int, float]:
    """The residual norm at the prompt's last token, per layer (what a relative alpha means:
    a fraction of it, as in the layer sweep's `residual_norms`)."""
    acts = hooked.capture([tokens], [f"residuals_{layer}" for layer in layers],
                          reduce=lambda x: mx.linalg.norm(x[:, -1].astype(mx.float32), axis=-1))
    return {layer: float(acts[f"residuals_{layer}"][0].item()) for layer in layers}


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def projection_sweep(hooked: HookedModel, vector: SteeringVector, tokens: list[int], *,
                     layers: Sequence[int], alpha: float, max_tokens: int) -> dict[str, Any]:
    """Per layer L: steer every position at L alone (as the behaviour sweep does), then read
    how far the generated text projects onto the vector at L, against the unsteered baseline:
    the change (steered - baseline) of the mean over the generated tokens, also as a fraction
    of the layer's mean residual norm, since raw projections grow with depth (one batch: row 0
    is the baseline, row i+1 steers layers[i])."""
    rows = [None, *(Steering({lyr: vector[lyr]}, alpha, positions="all") for lyr in layers)]
    gens: list[list[int]] = [[] for _ in rows]
    steps = stream_rows(hooked, tokens, rows, max_tokens=max_tokens)
    with contextlib.closing(steps):
        for step in steps:
            for r, token in step.items():
                gens[r].append(token)
    full = token_readout(hooked, [tokens + g for g in gens], unit_vectors(vector, layers))
    proj, resid = (_generated(part, gens) for part in full)
    norms = vector.norms
    out = []
    for i, layer in enumerate(layers):
        base, steered = _mean(proj[layer][0]), _mean(proj[layer][i + 1])
        delta = None if base is None or steered is None else steered - base
        scale = _mean(resid[layer][0])  # the baseline's mean residual norm at this layer
        out.append({"layer": layer, "norm": norms[layer], "baseline": base, "steered": steered,
                    "delta": delta, "residual_norm": scale,
                    "relative_delta": delta / scale if delta is not None and scale else None,
                    "text": hooked.tokenizer.decode(gens[i + 1])})
    return {"mode": "projection", "quantity": "projection_change", "alpha": alpha,
            "layers": out, "baseline_text": hooked.tokenizer.decode(gens[0]),
            "y_label": "change in projection (× residual norm)",
            "metric": "steered minus baseline: the mean projection of the generated tokens' "
                      "residuals onto the unit vector at the steered layer (read without "
                      "steering, so it measures the text itself), as a fraction of that "
                      "layer's mean residual norm; above 0, the steered text moved along the "
                      "vector"}
