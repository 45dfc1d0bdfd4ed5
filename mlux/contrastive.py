"""`ContrastiveSteering`: extract from contrast prompts, then generate and compare strengths."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from .extract import extract_steering_vectors, resolve_layers
from .generate import collect_rows, stream_rows
from .model import HookedModel
from .positions import Positions, resolve_positions
from .steering import Steering, steering_hooks
from .vectors import SteeringVector

__all__ = ["ContrastiveSteering"]


class ContrastiveSteering:
    """Steering vectors for one or several layers from positive vs negative prompts.

    `positions` says where the vector is added: `"all"` (the default) steers the prompt too;
    `"generated"` steers from the prompt's last token on, so `compare` serves every alpha from
    one prefill of the rest of the prompt.
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
        positions: Positions = "all",
    ) -> None:
        resolve_positions(positions, 0)  # validate early
        self.hooked = hooked
        self.layers = resolve_layers(hooked, [layer] if isinstance(layer, int) else list(layer))
        self.method, self.chat, self.positions = method, chat, positions
        self.num_pairs = min(len(positive), len(negative))
        self.vectors: SteeringVector = extract_steering_vectors(
            hooked, positive, negative, self.layers, method=method, chat=chat
        )

    @property
    def vector(self) -> SteeringVector:
        """The same `SteeringVector` as `vectors` (to save, combine or export)."""
        return self.vectors

    def hooks(self, alpha: float, *, prompt_length: Optional[int] = None) -> list:
        return steering_hooks(self.vectors, alpha, positions=self.positions,
                              prompt_length=prompt_length)

    def _tokens(self, prompt: str) -> list[int]:
        if self.chat:
            return self.hooked.encode_chat(prompt)
        return self.hooked.tokenize(prompt).tokens[0].tolist()

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

        With positions "generated", `prompt[:-1]` is prefilled once and shared by every row.
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
