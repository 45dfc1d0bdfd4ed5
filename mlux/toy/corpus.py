"""Synthetic corpus for the built-in toy model: two latent features decide the wording.

Each paragraph has a *sentiment* (happy/sad) and a *formality* (formal/casual), sampled
independently 50/50. A small template grammar fills slots from feature-specific word lists, so
every sentence carries both features and a model must track them across the whole paragraph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain, pairwise, product
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "ALLOWED_BIGRAMS",
    "CONTRAST_PROMPTS",
    "FEATURES",
    "MARKER_PREFIX",
    "MARKER_RATE",
    "TEMPLATES",
    "TEST_PROMPTS",
    "VOCABULARY",
    "WORDS",
    "Example",
    "classify",
    "feature_label",
    "feature_scorer",
    "generate_corpus",
    "generate_paragraph",
    "grammar_score",
    "repetition_rate",
]

FEATURES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"sentiment": ("happy", "sad"), "formality": ("formal", "casual")}
)
MARKER_PREFIX: Mapping[str, str] = MappingProxyType({"sentiment": "mood:", "formality": "style:"})
MARKER_RATE = 0.3  # fraction of paragraphs that start with an explicit `mood:` / `style:` marker
MIN_WORDS = 20  # sentences are added until the paragraph has at least this many words

# Slot name -> word list. Feature slots are keyed "<SLOT>:<value>" (or "<SLOT>:<sentiment>,
# <formality>" for slots that follow both); neutral slots have no value.
# Six words per feature list: with ten, or with 5% off-feature noise, the 1500-step run did not
# learn sentiment (measured); small lists make each word frequent enough to learn fast.
WORDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "ADJ:happy": ("bright", "cheerful", "joyful", "wonderful", "lovely", "sunny"),
    "ADJ:sad": ("gloomy", "bleak", "lonely", "dreary", "miserable", "grey"),
    "VERB:happy": ("laughed", "smiled", "celebrated", "danced", "cheered", "sang"),
    "VERB:sad": ("wept", "sighed", "mourned", "grieved", "cried", "frowned"),
    "ABSTRACT:happy": ("joy", "laughter", "delight", "sunshine", "music", "success"),
    "ABSTRACT:sad": ("sorrow", "grief", "loss", "tears", "despair", "regret"),
    "OPEN:formal": ("furthermore", "moreover", "indeed", "consequently", "nevertheless",
                    "accordingly"),
    "OPEN:casual": ("so", "well", "anyway", "honestly", "basically", "yeah"),
    "INT:formal": ("remarkably", "exceedingly", "considerably", "particularly", "notably",
                   "profoundly"),
    "INT:casual": ("super", "totally", "really", "pretty", "kinda", "seriously"),
    "GROUP:formal": ("colleagues", "residents", "delegates", "committee", "officials",
                     "attendees"),
    "GROUP:casual": ("buddies", "folks", "guys", "pals", "kids", "crew"),
    "SAY:formal": ("observed", "noted", "remarked", "stated", "reported", "declared"),
    "SAY:casual": ("said", "figured", "reckoned", "guessed", "thought", "yelled"),
    # Exclamations carry both features, so sentence starts need the whole paragraph state.
    "EXCL:happy,formal": ("fortunately", "happily", "thankfully", "gladly", "encouragingly",
                          "favourably"),
    "EXCL:sad,formal": ("regrettably", "unfortunately", "sadly", "alas", "lamentably",
                        "tragically"),
    "EXCL:happy,casual": ("yay", "wow", "woohoo", "hooray", "awesome", "sweet"),
    "EXCL:sad,casual": ("ugh", "meh", "bummer", "oof", "dang", "yikes"),
    "PLACE": ("garden", "house", "street", "town", "river", "market", "school", "office",
              "kitchen", "village", "city", "park", "station", "library", "harbour", "hall",
              "field", "bridge", "shop", "square", "beach", "farm", "museum", "church"),
    "PEOPLE": ("family", "neighbours", "children", "students", "friends", "team", "visitors",
               "workers", "teachers", "travellers", "parents", "villagers"),
    "PREP": ("in", "near", "by", "beside", "behind", "across"),
    "TIME": ("today", "yesterday", "tonight", "afterwards", "recently", "again"),
})
# Which features each feature-dependent slot follows (in the order of its WORDS key).
_SLOT_FEATURES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "ADJ": ("sentiment",), "VERB": ("sentiment",), "ABSTRACT": ("sentiment",),
    "OPEN": ("formality",), "INT": ("formality",), "GROUP": ("formality",),
    "SAY": ("formality",), "EXCL": ("sentiment", "formality"),
})

# Sentence templates: upper-case items are slots, lower-case items are literal words.
TEMPLATES: tuple[tuple[str, ...], ...] = tuple(t.split() for t in (
    "OPEN the PLACE was INT ADJ .",
    "the GROUP VERB PREP the ADJ PLACE .",
    "EXCL the PEOPLE SAY that the PLACE was ADJ .",
    "TIME the GROUP felt INT ADJ .",
    "there was ABSTRACT in the PLACE and the GROUP VERB .",
    "OPEN the PEOPLE VERB with ABSTRACT PREP the PLACE .",
    "the ADJ PLACE brought ABSTRACT to the GROUP .",
    "EXCL everyone VERB TIME .",
    "the PLACE looked INT ADJ and the PEOPLE VERB .",
    "OPEN it was a ADJ day for the GROUP .",
    "EXCL the GROUP VERB in the PLACE .",
))
_MARKER_WORDS = ("mood:", "happy", "sad", "style:", "formal", "casual")


def _vocabulary() -> tuple[str, ...]:
    literals = (w for t in TEMPLATES for w in t if not w.isupper())
    words = chain(_MARKER_WORDS, literals, *WORDS.values())
    return tuple(dict.fromkeys(words))


VOCABULARY: tuple[str, ...] = _vocabulary()

# Indicative word -> ((feature, value), ...), for the behaviour scorer.
_INDICATIVE: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    w: tuple(zip(_SLOT_FEATURES[slot], values.split(","), strict=True))
    for slot, _, values in (k.partition(":") for k in WORDS) if values
    for w in WORDS[f"{slot}:{values}"]
})


def _allowed_bigrams() -> frozenset[tuple[str, str]]:
    """Every adjacent word pair the grammar (markers, templates, sentence joins) can emit."""
    def words(item: str) -> set[str]:
        if not item.isupper():
            return {item}
        return set(chain.from_iterable(v for k, v in WORDS.items() if k.split(":")[0] == item))

    slot_pairs = {(a, b) for t in TEMPLATES for a, b in pairwise(t)}
    slot_pairs |= {(".", t[0]) for t in TEMPLATES}
    pairs = set(chain.from_iterable(product(words(a), words(b)) for a, b in slot_pairs))
    # Markers: "mood: X [style: Y]" or "style: Y", then any sentence start.
    starts = set(chain.from_iterable(words(t[0]) for t in TEMPLATES))
    pairs |= {("mood:", "happy"), ("mood:", "sad"), ("style:", "formal"), ("style:", "casual")}
    pairs |= {(m, "style:") for m in ("happy", "sad")}
    pairs |= {(m, s) for m in ("happy", "sad", "formal", "casual") for s in starts}
    return frozenset(pairs)


ALLOWED_BIGRAMS: frozenset[tuple[str, str]] = _allowed_bigrams()


def _contrast_prompts(feature: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Positive/negative prompts that differ only in words of `feature`.

    They end where the model needs the feature next ("." and "the" precede feature-dependent
    words), so last-token activations carry the paragraph state, not just the last word.
    """
    places, people, times = WORDS["PLACE"], WORDS["PEOPLE"], WORDS["TIME"]

    def side(v: str) -> tuple[str, ...]:
        if feature == "sentiment":
            return (*(f"the {w} {p} ." for w, p in zip(WORDS[f"ADJ:{v}"], places, strict=False)),
                    *(f"there was {w} in the" for w in WORDS[f"ABSTRACT:{v}"]),
                    *(f"the {p} {w} ." for w, p in zip(WORDS[f"VERB:{v}"], people, strict=False)))
        return (*(f"{w} the" for w in WORDS[f"OPEN:{v}"]),
                *(f"the {p} {w} that the" for w, p in zip(WORDS[f"SAY:{v}"], people, strict=False)),
                *(f"{t} the {w} felt" for w, t in zip(WORDS[f"GROUP:{v}"], times, strict=False)))

    a, b = FEATURES[feature]
    return side(a), side(b)


# Steering contrasts: {feature: (positive prompts, negative prompts)}, 18 aligned pairs each.
CONTRAST_PROMPTS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType(
    {feature: _contrast_prompts(feature) for feature in FEATURES}
)
# Prefixes that imply neither feature: an unsteered model continues them ~50/50 on both.
TEST_PROMPTS: tuple[str, ...] = (
    "the", "today the", "there was", "yesterday the", "tonight the", "<bos> the",
    "the market", "afterwards the",
)


@dataclass(frozen=True)
class Example:
    """One paragraph with the latent labels that generated it (`marker` is "" if unmarked)."""

    text: str
    sentiment: str
    formality: str
    marker: str = ""


def _fill(
    template: tuple[str, ...], feats: Mapping[str, str], rng: np.random.Generator
) -> list[str]:
    out: list[str] = []
    for item in template:
        if not item.isupper():
            out.append(item)
            continue
        key = item
        if item in _SLOT_FEATURES:
            key = f"{item}:" + ",".join(feats[f] for f in _SLOT_FEATURES[item])
        choices = WORDS[key]
        out.append(choices[rng.integers(len(choices))])
    return out


def generate_paragraph(rng: np.random.Generator) -> Example:
    """Sample one paragraph: features, optional marker, then sentences up to >= 20 words."""
    feats = {f: vals[rng.integers(2)] for f, vals in FEATURES.items()}
    marker = ""
    if rng.random() < MARKER_RATE:
        mood, style = (f"{MARKER_PREFIX[f]} {feats[f]}" for f in ("sentiment", "formality"))
        marker = (mood, style, f"{mood} {style}")[rng.integers(3)]
    words: list[str] = []
    while len(words) < MIN_WORDS:
        words += _fill(TEMPLATES[rng.integers(len(TEMPLATES))], feats, rng)
    text = " ".join(([marker] if marker else []) + words)
    return Example(text, feats["sentiment"], feats["formality"], marker)


def generate_corpus(n: int, seed: int) -> list[Example]:
    """`n` paragraphs, deterministic for a given `seed`."""
    rng = np.random.default_rng(seed)
    return [generate_paragraph(rng) for _ in range(n)]


def _content_words(text: str) -> list[str]:
    """Words with special tokens and explicit markers removed (markers are not behaviour)."""
    words = [w for w in text.split() if not (w.startswith("<") and w.endswith(">"))]
    out: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w in MARKER_PREFIX.values():
            skip = True
        else:
            out.append(w)
    return out


def classify(text: str) -> dict[str, dict[str, Any]]:
    """Count feature-indicative words; label each feature by majority (None on a tie).

    Returns e.g. `{"sentiment": {"happy": 3, "sad": 0, "label": "happy"},
    "formality": {"formal": 1, "casual": 1, "label": None}}`.
    """
    out: dict[str, dict[str, Any]] = {f: dict.fromkeys(v, 0) for f, v in FEATURES.items()}
    for w in _content_words(text):
        for feature, value in _INDICATIVE.get(w, ()):
            out[feature][value] += 1
    for feature, (a, b) in FEATURES.items():
        na, nb = out[feature][a], out[feature][b]
        out[feature]["label"] = a if na > nb else b if nb > na else None
    return out


def feature_label(text: str, feature: str) -> str | None:
    """Majority label of one feature (`"sentiment"` or `"formality"`) in `text`."""
    return classify(text)[feature]["label"]


def feature_scorer(feature: str, value: str) -> Callable[[str], bool | None]:
    """A behaviour function: True if `text` is labelled `value`, False if the other value,
    None if the feature can't be told (a tie)."""
    if feature not in FEATURES or value not in FEATURES[feature]:
        raise ValueError(f"unknown toy behaviour {feature}={value}; valid: " + ", ".join(
            f"{f}={v}" for f, vs in FEATURES.items() for v in vs))

    def scorer(text: str) -> bool | None:
        label = feature_label(text, feature)
        return None if label is None else label == value

    scorer.__name__ = f"toy:{feature}={value}"
    return scorer


def grammar_score(text: str) -> float:
    """Fraction of adjacent word pairs the grammar can produce (1.0 if there are none)."""
    words = [w for w in text.split() if not (w.startswith("<") and w.endswith(">"))]
    pairs = list(pairwise(words))
    if not pairs:
        return 1.0
    return sum(pair in ALLOWED_BIGRAMS for pair in pairs) / len(pairs)


def repetition_rate(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one (degenerate loops score high)."""
    words = _content_words(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
