"""The contrast sets mlux ships: for each model, the positive / negative prompts a vector is
extracted from, the prompts it is tried on, a scorer and calibrated strengths.

The built-in model gets its own features (`mlux.toy`); every other model the happy/sad set.
Used by `mlux demo`, the sweeps' defaults and the explorer's starting values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .builtin import BUILTIN_MODELS
from .toy import CONTRAST_PROMPTS, FEATURES, TEST_PROMPTS, feature_scorer

__all__ = ["HAPPY_SAD", "ContrastTask", "contrast_task"]

HAPPY_SAD = (
    ("I feel so happy and grateful today.", "What a wonderful, joyful morning!",
     "Everything went perfectly, I love it.", "We laughed and celebrated all night.",
     "This is the best news I have heard.", "I am delighted and full of hope."),
    ("I feel so sad and lonely today.", "What a miserable, gloomy morning.",
     "Everything went wrong, I hate it.", "We cried and grieved all night.",
     "This is the worst news I have heard.", "I am heartbroken and without hope."),
)
_HAPPY_WORDS = frozenset("happy joy joyful glad love wonderful great delighted hope smile "
                         "laugh grateful beautiful best excited".split())
_SAD_WORDS = frozenset("sad lonely miserable gloomy cry cried grief hate worst heartbroken "
                       "tears sorrow pain alone hopeless".split())


@dataclass(frozen=True)
class ContrastTask:
    feature: str
    target: str  # the value whose rate the table reports
    positive: Sequence[str]
    negative: Sequence[str]
    prompts: Sequence[str]
    scorer: Callable[[str], Optional[bool]]
    alphas: tuple[float, ...]
    layer: Optional[int] = None  # None: the model config's first recommended layer


def _word_scorer(text: str) -> Optional[bool]:
    words = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    happy = sum(w in _HAPPY_WORDS for w in words)
    sad = sum(w in _SAD_WORDS for w in words)
    return None if happy == sad else happy > sad


def contrast_task(model_name: str, feature: Optional[str]) -> ContrastTask:
    """Contrast prompts, test prompts, scorer and strengths for `model_name`."""
    if model_name in BUILTIN_MODELS:
        feature = feature or "sentiment"
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; the built-in model has "
                             f"{', '.join(FEATURES)}")
        target = FEATURES[feature][0]
        pos, neg = CONTRAST_PROMPTS[feature]
        scorer = feature_scorer(feature, target)
        # Calibrated on the built-in model (its card's steering table): formality's vector is
        # long relative to the stream, so it needs a smaller alpha.
        layer, alpha = {"sentiment": (2, 2.0), "formality": (3, 0.75)}[feature]
        return ContrastTask(feature, target, pos, neg, TEST_PROMPTS, scorer, (-alpha, 0.0, alpha),
                        layer)
    if feature not in (None, "happy_sad", "sentiment"):
        raise ValueError(f"feature {feature!r} is only for the built-in model; other models get "
                         "the happy/sad contrast")
    prompts = ("Tell me about your day.", "Describe the weather.", "Write about a city.",
               "What happened at the party?")
    return ContrastTask("happy_sad", "happy", HAPPY_SAD[0], HAPPY_SAD[1], prompts, _word_scorer,
                    (-4.0, 0.0, 4.0))
