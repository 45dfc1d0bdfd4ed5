"""Behaviour and representation checks for the toy model (training report, model card, tests).

Residual streams are captured with a plain loop over `model.model.layers` (llama layout), so
this module does not depend on mlux's hook API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask

from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.toy.corpus import (
    CONTRAST_PROMPTS,
    FEATURES,
    MARKER_PREFIX,
    TEST_PROMPTS,
    Example,
    feature_label,
    grammar_score,
    repetition_rate,
)

__all__ = ["base_rates", "last_token_residuals", "marker_accuracy", "probe_layers",
           "sample_continuations"]


def sample_continuations(
    model: nn.Module | HookedModel,
    tokenizer: Any,
    prompt: str,
    n: int,
    *,
    max_tokens: int = 30,
    temperature: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """Sample `n` continuations of `prompt` (text after the prompt, cut at `<eos>`).

    `tokenizer` is an `mlx_lm` TokenizerWrapper or a Hugging Face tokenizer; `seed` makes the
    draw reproducible (it reseeds MLX's global generator, so all rows sample in one call).
    """
    hooked = model if isinstance(model, HookedModel) else HookedModel(model, tokenizer)
    if seed is not None:
        mx.random.seed(seed)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    rows = generate_batch(hooked, [ids] * n, max_tokens=max_tokens, temperature=temperature)
    return [tokenizer.decode(row) for row in rows]


def marker_accuracy(
    model: nn.Module, tokenizer: Any, n: int = 200, *, seed: int = 0, max_tokens: int = 40
) -> dict[str, float]:
    """Fraction of continuations of `"mood: happy"` etc. whose majority label is the marked one."""
    out: dict[str, float] = {}
    for i, (feature, values) in enumerate(FEATURES.items()):
        for j, value in enumerate(values):
            prompt = f"{MARKER_PREFIX[feature]} {value}"
            texts = sample_continuations(
                model, tokenizer, prompt, n, max_tokens=max_tokens, seed=seed + 2 * i + j
            )
            out[prompt] = float(np.mean([feature_label(t, feature) == value for t in texts]))
    return out


def base_rates(
    model: nn.Module,
    tokenizer: Any,
    n_per_prompt: int = 50,
    *,
    prompts: Sequence[str] = TEST_PROMPTS,
    seed: int = 0,
    max_tokens: int = 40,
) -> dict[str, Any]:
    """Unsteered label rates on neutral prompts, plus coherence of the samples."""
    texts: list[str] = []
    per_prompt: dict[str, dict[str, float]] = {}
    for k, prompt in enumerate(prompts):
        cont = sample_continuations(
            model, tokenizer, prompt, n_per_prompt, max_tokens=max_tokens, seed=seed + k
        )
        texts += [f"{prompt} {c}" for c in cont]
        per_prompt[prompt] = {
            vals[0]: float(np.mean([feature_label(c, f) == vals[0] for c in cont]))
            for f, vals in FEATURES.items()
        }
    rates = {
        v: float(np.mean([feature_label(t, f) == v for t in texts]))
        for f, vals in FEATURES.items() for v in vals
    }
    rates |= {
        f"{f}_unlabelled": float(np.mean([feature_label(t, f) is None for t in texts]))
        for f in FEATURES
    }
    return {
        "rates": rates,
        "per_prompt": per_prompt,
        "grammar_score": float(np.mean([grammar_score(t) for t in texts])),
        "repetition_rate": float(np.mean([repetition_rate(t) for t in texts])),
        "n_samples": len(texts),
        "example": texts[:4],
    }


def last_token_residuals(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Residual stream at each text's last token: shape (n_layers + 1, n_texts, hidden).

    Index 0 is the embedding output, index i the output of decoder block i-1 (`residuals_{i-1}`).
    """
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    # Right-padding is harmless: causal attention keeps pads out of earlier positions.
    tokens = mx.array([row + [0] * (width - len(row)) for row in ids])
    last = mx.array([len(row) - 1 for row in ids])
    h = model.model.embed_tokens(tokens)
    mask = create_attention_mask(h, None)
    outs = [h]
    for layer in model.model.layers:
        h = layer(h, mask, cache=None)
        outs.append(h)
    picked = [o[mx.arange(len(ids)), last] for o in outs]
    return np.array(mx.stack(picked).astype(mx.float32))


def _accuracy(proj: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(np.mean((proj > threshold) == labels))


def probe_layers(
    model: nn.Module, tokenizer: Any, examples: Sequence[Example]
) -> dict[str, dict[str, list[float]]]:
    """Per-layer linear separability of each feature at the paragraph's last token.

    `diff_of_means`: direction and threshold fit on the first half of `examples`, accuracy on
    the second half. `contrast_direction`: direction from CONTRAST_PROMPTS (what a steering vector
    would use), accuracy on all examples with a median threshold (classes are balanced).
    """
    acts = last_token_residuals(model, tokenizer, [e.text for e in examples])
    half = len(examples) // 2
    out: dict[str, dict[str, list[float]]] = {}
    for feature, (pos_value, _) in FEATURES.items():
        labels = np.array([getattr(e, feature) == pos_value for e in examples])
        pos, neg = CONTRAST_PROMPTS[feature]
        c_pos = last_token_residuals(model, tokenizer, pos).mean(axis=1)
        c_neg = last_token_residuals(model, tokenizer, neg).mean(axis=1)
        dom, con = [], []
        for layer, a in enumerate(acts):
            mu_p = a[:half][labels[:half]].mean(0)
            mu_n = a[:half][~labels[:half]].mean(0)
            d = mu_p - mu_n
            dom.append(_accuracy(a[half:] @ d, labels[half:], float((mu_p + mu_n) @ d / 2)))
            proj = a @ (c_pos[layer] - c_neg[layer])
            con.append(_accuracy(proj, labels, float(np.median(proj))))
        out[feature] = {"diff_of_means": dom, "contrast_direction": con}
    return out
