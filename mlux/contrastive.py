"""`ContrastiveSteering`: extract from contrast prompts, then generate and compare strengths."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import mlx.core as mx

from .batch import Steering, collect_rows, stream_rows
from .interventions import Positions, resolve_positions, steering_hooks
from .model import HookedModel
from .steering import apply_chat, extract_steering_vectors, resolve_layers

__all__ = ["ContrastiveSteering"]


class ContrastiveSteering:
    """Steering vectors for one or several layers from positive vs negative prompts.

    `positions` says where the vector is added; the default, `"generated"`, leaves the prompt
    untouched so `compare` serves every alpha from one prefill. Use `"all"` to steer the prompt too.
    """

    def __init__(
        self,
        hooked: HookedModel,
        positive: Sequence[str],
        negative: Sequence[str],
        layer: Union[int, Iterable[int]],
        *,
        method: str = "mean_diff",
        chat: bool = False,
        positions: Positions = "generated",
    ) -> None:
        resolve_positions(positions, 0)  # validate early
        self.hooked = hooked
        self.layers = resolve_layers(hooked, [layer] if isinstance(layer, int) else list(layer))
        self.method, self.chat, self.positions = method, chat, positions
        self.num_pairs = min(len(positive), len(negative))
        self.vectors: dict[int, mx.array] = extract_steering_vectors(
            hooked, positive, negative, self.layers, method=method, chat=chat
        )

    @property
    def vector(self) -> Any:
        """The vectors as a `SteeringVector` (to save, combine or export)."""
        from .vectors import SteeringVector

        return SteeringVector(
            directions=dict(self.vectors), model_id=self.hooked.model_id, method=self.method,
            num_pairs=self.num_pairs,
        )

    def hooks(self, alpha: float, *, prompt_length: Optional[int] = None) -> list:
        return steering_hooks(self.vectors, alpha, positions=self.positions,
                              prompt_length=prompt_length)

    def _tokens(self, prompt: str) -> list[int]:
        text = apply_chat(self.hooked, [prompt])[0] if self.chat else prompt
        return self.hooked.tokenize(text).tokens[0].tolist()

    def compare(
        self,
        prompt: str,
        *,
        alphas: Sequence[float],
        max_tokens: int = 40,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
    ) -> dict[float, str]:
        """Continuation text (prompt excluded) per alpha, all alphas decoded as one batch.

        When the steering leaves the prompt untouched (positions "generated"), the prompt is
        prefilled once and that cache is shared by every row.
        """
        alphas = [float(a) for a in alphas]
        if not alphas:
            raise ValueError("compare needs at least one alpha")
        rows = [Steering(self.vectors, a, positions=self.positions) if a else None
                for a in alphas]
        outs = collect_rows(stream_rows(
            self.hooked, self._tokens(prompt), rows, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p,
            seeds=None if seed is None else [seed] * len(rows)), len(rows))
        return {a: self.hooked.tokenizer.decode(ids) for a, ids in zip(alphas, outs,
                                                                        strict=True)}

    def generate(
        self,
        prompt: str,
        *,
        alpha: float,
        max_tokens: int = 40,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
    ) -> str:
        """The steered continuation of `prompt` (prompt excluded)."""
        return self.compare(prompt, alphas=[alpha], max_tokens=max_tokens,
                            temperature=temperature, top_p=top_p, seed=seed)[float(alpha)]
