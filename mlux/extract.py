"""Contrastive extraction: a steering direction per layer from positive vs negative prompts.

Every requested layer comes from the same batched forward passes (one pass per batch of
prompts, never one per layer); only each prompt's last-token residual is kept.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

import mlx.core as mx

from .model import HookedModel
from .vectors import SteeringVector

__all__ = [
    "METHODS",
    "compute_steering_vector",
    "extract_steering_vectors",
    "extract_with_activations",
    "last_token_activations",
    "resolve_layers",
]

METHODS = ("mean_diff", "pca")


def resolve_layers(hooked: HookedModel, layers: Union[int, str, Iterable[Any]]) -> list[int]:
    """Layer ints (negative from the end) or `residuals_*` specs -> block indices."""
    names = hooked.expand_layer_specs(layers)
    bad = [n for n in names if not n.startswith("residuals_")]
    if bad:
        raise ValueError(f"steering vectors are read from residuals_i; got {bad}")
    return [int(n.rsplit("_", 1)[1]) for n in names]


def _check_prompts(prompts: Any, what: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"{what} prompts must be a list of strings")
    if not prompts:
        raise ValueError(f"{what} prompt list is empty; give at least one prompt")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{what} prompts must all be non-empty strings")
    return list(prompts)


def last_token_activations(
    hooked: HookedModel, prompts: Sequence[Union[str, list[int]]], layers: list[int], *,
    batch_size: int = 16,
) -> dict[int, mx.array]:
    """float32 `(N, D)` residuals at each prompt's last token, per layer, batched."""
    names = [f"residuals_{i}" for i in layers]
    parts: dict[int, list[mx.array]] = {i: [] for i in layers}
    for s in range(0, len(prompts), batch_size):
        # Left padding puts every prompt's last real token at position T-1; the pass stops at
        # the deepest layer asked for.
        acts = hooked.capture(list(prompts[s : s + batch_size]), names,
                              reduce=lambda x: x[:, -1].astype(mx.float32))
        for i, n in zip(layers, names, strict=True):
            parts[i].append(acts[n])
    return {i: mx.concatenate(p, axis=0) for i, p in parts.items()}


def _pca_direction(pos: mx.array, neg: mx.array) -> mx.array:
    """First right-singular vector of the paired differences (not mean-removed, so a shift
    shared by all pairs dominates), signed so positives project higher, scaled to the mean
    projected difference so alphas mean the same as for mean_diff."""
    diffs = pos - neg  # (N, D)
    _, _, vt = mx.linalg.svd(diffs, stream=mx.cpu)
    d = vt[0]
    proj = diffs @ d
    if float(mx.mean(proj > 0).item()) < 0.5 or (
        float(mx.mean(proj > 0).item()) == 0.5 and float(mx.mean(proj).item()) < 0
    ):
        d, proj = -d, -proj
    return d * mx.mean(proj)


def extract_with_activations(hooked: HookedModel, positive: Sequence[str],
                             negative: Sequence[str], layers: Union[int, str, Iterable[Any]],
                             **options: Any) -> tuple[SteeringVector, dict[int, mx.array]]:
    """`extract_steering_vectors` (same options), plus the float32 last-token activations
    `(N, D)` it was computed from (positives first), for callers that need both from one pass."""
    return _extract(hooked, positive, negative, layers, **options)


def _extract(hooked: HookedModel, positive: Sequence[str], negative: Sequence[str],
             layers: Union[int, str, Iterable[Any]], *, method: str = "mean_diff",
             chat: bool = False, batch_size: int = 16,
             ) -> tuple[SteeringVector, dict[int, mx.array]]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    positive, negative = _check_prompts(positive, "positive"), _check_prompts(negative, "negative")
    if method == "pca" and len(positive) != len(negative):
        raise ValueError(f"method='pca' needs paired prompts: got {len(positive)} positive and "
                         f"{len(negative)} negative")
    if method == "pca" and len(positive) < 2:
        raise ValueError("method='pca' needs at least 2 prompt pairs")
    layer_ids = resolve_layers(hooked, layers)
    prompts: list[Any] = [*positive, *negative]
    if chat:
        prompts = [hooked.encode_chat(p) for p in prompts]
    acts = last_token_activations(hooked, prompts, layer_ids, batch_size=batch_size)
    n = len(positive)
    out = {}
    for i in layer_ids:
        pos, neg = acts[i][:n], acts[i][n:]
        vec = _pca_direction(pos, neg) if method == "pca" else pos.mean(0) - neg.mean(0)
        if not bool(mx.all(mx.isfinite(vec)).item()):
            raise ValueError(f"the vector at layer {i} is not finite (activations overflowed)")
        out[i] = vec
    mx.eval(out)
    vector = SteeringVector(out, model_id=hooked.model_id, method=method,
                            num_pairs=min(len(positive), len(negative)),
                            metadata={"num_positive": len(positive),
                                      "num_negative": len(negative), "chat": chat})
    return vector, acts


def extract_steering_vectors(
    hooked: HookedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: Union[int, str, Iterable[Any]],
    *,
    method: str = "mean_diff",
    chat: bool = False,
    batch_size: int = 16,
) -> SteeringVector:
    """Per-layer `(D,)` float32 directions, as a `SteeringVector` (a mapping layer -> direction):
    `"mean_diff"` (CAA) or `"pca"` (paired, repeng-style), from batched passes that stop at the
    deepest layer asked for. `chat=True` wraps each prompt in the tokenizer's chat template.
    """
    return _extract(hooked, positive, negative, layers, method=method, chat=chat,
                    batch_size=batch_size)[0]


def compute_steering_vector(
    hooked: HookedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    **kwargs: Any,
) -> mx.array:
    """CAA: mean last-token `residuals_{layer}` over positives minus the same over negatives."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int, got {layer!r}")
    return extract_steering_vectors(hooked, positive, negative, layer, **kwargs)[
        resolve_layers(hooked, layer)[0]]
