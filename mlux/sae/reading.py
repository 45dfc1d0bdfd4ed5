"""Reading an SAE's features on a model: the top active features of every token of a prompt and
of its greedy continuation, optionally generated (and read) with one feature clamped. Used by
`mlux features` and the explorer's SAE panel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from mlux.behavior import prompt_ids
from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.steering import Steering

from .model import SparseAutoencoder
from .steer import check_feature, clamp_hook

__all__ = ["TokenFeatures", "read_features"]


@dataclass
class TokenFeatures:
    """One token, its text, whether it was generated, and its top (feature, activation)s."""

    token: int
    text: str
    generated: bool
    features: list[tuple[int, float]]

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "text": self.text, "generated": self.generated,
                "features": [{"feature": f, "activation": a} for f, a in self.features]}


def read_features(hooked: HookedModel, sae: SparseAutoencoder, prompt: Any, *, k: int = 5,
                  max_tokens: int = 0, clamp: Optional[tuple[int, float]] = None,
                  chat: bool = False) -> list[TokenFeatures]:
    """Top-`k` features of each prompt token and of `max_tokens` greedily generated ones, at
    the SAE's hook point. With `clamp=(feature, value)` the text is generated with that feature
    clamped (error term kept) and the features are read from the clamped stream."""
    hook = sae.config.hook
    if hook is None or hook not in hooked.hook_points:
        raise ValueError(f"the SAE's hook_name {sae.config.hook_name!r} is not a hook point of "
                         "this model")
    sae.check_model(hooked.hidden_size, hooked.num_layers)
    if clamp is not None:
        check_feature(sae, *clamp)
    ids = prompt_ids(hooked, prompt, chat)
    generated: list[int] = []
    if max_tokens > 0:
        steering = [Steering(sae_clamp=(sae, *clamp))] if clamp is not None else None
        generated = generate_batch(hooked, [ids], max_tokens=max_tokens, steering=steering)[0]
    hooks = [(hook, clamp_hook(sae, *clamp))] if clamp is not None else None
    acts = hooked.capture([ids + generated], [hook], hooks=hooks)[hook][0]  # (T, D)
    idx, val = sae.features(acts, k)  # (T, k) each
    tok = hooked.tokenizer
    return [TokenFeatures(t, tok.decode([t]), i >= len(ids),
                          [(int(f), float(a)) for f, a in zip(idx[i].tolist(), val[i].tolist(),
                                                              strict=True) if a > 0])
            for i, t in enumerate(ids + generated)]
