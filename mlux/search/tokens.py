"""The generation-free behaviour score: log-odds of a target token set at the last prompt
position (Arditi et al.'s `refusal_score`), and the token sets a behaviour name implies."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import mlx.core as mx

from ..evaluation import first_token_logits, log_softmax
from ..toy import FEATURES, WORDS

__all__ = ["REFUSAL_WORDS", "behavior_words", "token_ids", "token_logodds"]

# First tokens of chat models' refusals ("I cannot", "Sorry, ...", "As an AI"), Arditi's set.
REFUSAL_WORDS = ("I", "Sorry", "As", "Unfortunately")


def behavior_words(spec: str) -> Optional[tuple[list[str], list[str]]]:
    """(target words, contrasting words) for a behaviour name of the sweeps' convention:
    `toy:FEATURE=VALUE` (the feature's indicative words of VALUE against the other value's),
    `contains:w1,w2`, `refusal`; None for a `module:function` (no token set is known)."""
    if spec.startswith("toy:"):
        feature, _, value = spec[4:].partition("=")
        if feature not in FEATURES or value not in FEATURES[feature]:
            raise ValueError(f"unknown toy behaviour {spec[4:]!r}; valid: " + ", ".join(
                f"{f}={v}" for f, vs in FEATURES.items() for v in vs))
        other = next(v for v in FEATURES[feature] if v != value)

        def words(v: str) -> list[str]:
            return [w for key, ws in WORDS.items() if v in key.partition(":")[2].split(",")
                    for w in ws]

        return words(value), words(other)
    if spec.startswith("contains:"):
        return [w.strip() for w in spec[9:].split(",") if w.strip()], []
    if spec == "refusal":
        return list(REFUSAL_WORDS), []
    return None


def token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token of each word, bare and after a space (BPE vocabularies spell them
    differently), without duplicates."""
    ids: dict[int, None] = {}
    for w in words:
        for text in (w, " " + w):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if toks:
                ids[int(toks[0])] = None
    if not ids:
        raise ValueError(f"none of the words {list(words)[:5]} has a token")
    return list(ids)


def token_logodds(hooked: Any, prompts: Sequence[Any], target: Sequence[int],
                  against: Sequence[int] = (), hooks: Any = None,
                  steering: Optional[Sequence[Any]] = None) -> mx.array:
    """Per prompt `(N,)`: log p(target set) - log p(against set) at the last position, or
    log p(T) - log(1 - p(T)) without an `against` set. One forward with `hooks`, or per-row
    `steering` (as `first_token_logits`)."""
    logits = first_token_logits(hooked, prompts, hooks, steering=steering)  # (N, V)
    logp = log_softmax(logits)
    hit = mx.logsumexp(logp[:, mx.array(list(target))], axis=-1)  # (N,)
    if against:
        return hit - mx.logsumexp(logp[:, mx.array(list(against))], axis=-1)
    return hit - mx.log(mx.maximum(1.0 - mx.exp(hit), 1e-12))
