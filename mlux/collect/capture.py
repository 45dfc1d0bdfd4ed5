"""One batch of prompts through the model: optional generation, then the activations at the
requested token positions of every hook point, as numpy arrays. Activations come from
`HookedModel.capture`: the pass stops at the deepest hook point and never runs the LM head."""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import numpy as np

from mlux.inputs import encode
from mlux.model import HookedModel

__all__ = ["BatchActivations", "capture_batch", "encode_prompts"]

# hook -> position -> per-row arrays: (D,) for last/mean, (tokens, D) for all/generated
BatchActivations = dict[str, dict[str, list[np.ndarray]]]


def encode_prompts(hooked: HookedModel, prompts: Sequence[str], *, chat_template: bool = False
                   ) -> list[list[int]]:
    """Token ids of each prompt, as a user turn of the chat template when asked."""
    if not chat_template:
        return [encode(hooked.tokenizer, p) for p in prompts]
    if getattr(hooked.tokenizer, "chat_template", None) is None:
        raise ValueError(f"inference.chat_template is true but {hooked.model_id!r} has no chat "
                         "template; set it to false")
    return [hooked.encode_chat(p) for p in prompts]


def _reducer(lengths: list[int], width: int, positions: Sequence[str]):  # noqa: ANN202
    """Keep only `last`/`mean` rows inside the hook, so a batch never holds (B, T, D) per point.

    Also correct under `capture`'s row-by-row fallback, where x is one unpadded row.
    """
    pad = mx.array([width - n for n in lengths])[:, None]
    batch_mask = mx.arange(width)[None, :] >= pad
    batch_len = mx.array(lengths, dtype=mx.float32)[:, None]

    def reduce(x: mx.array) -> mx.array:
        x = x.astype(mx.float32)
        if x.shape[:2] == (len(lengths), width):
            mask, n = batch_mask, batch_len
        else:  # one row run alone: every position is real
            mask, n = mx.ones(x.shape[:2], dtype=mx.bool_), mx.array([[x.shape[1]]], mx.float32)
        parts = []
        for p in positions:
            if p == "last":
                parts.append(x[:, -1])
            else:  # where, not multiply: padded positions may hold NaN (fully masked rows)
                parts.append(mx.where(mask[..., None], x, 0.0).sum(axis=1) / n)
        return mx.stack(parts, axis=1)

    return reduce


def capture_batch(hooked: HookedModel, rows: list[list[int]], generated: list[list[int]],
                  hook_points: Sequence[str], positions: Sequence[str]) -> BatchActivations:
    """Activations of one batch. With `generated`, the prompt and its continuation run as one
    sequence (causal, so the prompt positions are unchanged) and `generated` keeps the rows at
    the continuation's tokens."""
    with_gen = "generated" in positions
    seqs = [r + g for r, g in zip(rows, generated, strict=True)] if with_gen else rows
    width = max(len(s) for s in seqs)
    full = bool({"all", "generated"} & set(positions))
    reduce = None if full else _reducer([len(r) for r in rows], width, positions)
    acts = hooked.capture(seqs, list(hook_points), reduce=reduce)
    out: BatchActivations = {}
    for h in hook_points:
        x = np.asarray(acts.pop(h).astype(mx.float32))
        if not full:
            out[h] = {p: list(x[:, k]) for k, p in enumerate(positions)}
            continue
        per: dict[str, list[np.ndarray]] = {p: [] for p in positions}
        for i, (r, s) in enumerate(zip(rows, seqs, strict=True)):
            start = width - len(s)
            prompt, cont = x[i, start:start + len(r)], x[i, start + len(r):]
            for p in positions:
                per[p].append(_pick(p, prompt, cont))
        out[h] = per
    return out


def _pick(position: str, prompt: np.ndarray, cont: np.ndarray) -> np.ndarray:
    # Copies, so the batch's padded (B, T, D) array is freed once the batch is done.
    if position == "last":
        return prompt[-1].copy()
    if position == "mean":
        return prompt.mean(axis=0)
    return (prompt if position == "all" else cont).copy()
