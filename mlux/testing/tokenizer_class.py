"""Saved tiny folders that every mlx-lm loader reads with its defaults: the tokenizer class
transformers >= 5 would otherwise override for some model types."""

from __future__ import annotations

import json
from pathlib import Path

from .tiny_configs import _FORCED_TOKENIZER_TYPES

__all__ = ["forced_tokenizer_types", "keep_declared_tokenizer_class"]


def forced_tokenizer_types() -> frozenset[str]:
    """Model types for which transformers >= 5 overrides the declared tokenizer class."""
    try:
        from transformers.models.auto import tokenization_auto
    except ImportError:
        return _FORCED_TOKENIZER_TYPES
    forced = getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ())
    return _FORCED_TOKENIZER_TYPES | frozenset(forced)


def keep_declared_tokenizer_class(folder: Path) -> None:
    """Make transformers >= 5 load the word-level `tokenizer.json` as written, whatever
    `trust_remote_code` says.

    For some model types transformers 5 ignores `tokenizer_class` and forces its own class;
    for qwen2 that is `Qwen2Tokenizer`, which rebuilds a byte-level BPE from the vocabulary
    and so encodes every word to nothing. Declaring an `auto_map` makes it skip that override.
    Without trust_remote_code it then falls back to the declared `tokenizer_class`; with it
    (`mlx_lm.utils.sharded_load`'s default) it loads the class the map names, so the map names
    a real one: `TinyWordTokenizer` in the folder's own `tokenization_tiny.py`, transformers'
    fast tokenizer under another name. transformers 4 honours `tokenizer_class` either way.
    """
    (folder / f"{_TOKENIZER_MODULE}.py").write_text(_TOKENIZER_SOURCE)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["auto_map"] = {"AutoTokenizer": [None, f"{_TOKENIZER_MODULE}.TinyWordTokenizer"]}
    config.write_text(json.dumps(data, indent=2))


_TOKENIZER_MODULE = "tokenization_tiny"
_TOKENIZER_SOURCE = '''"""The tiny word-level tokenizer: transformers' fast tokenizer."""

from transformers import PreTrainedTokenizerFast


class TinyWordTokenizer(PreTrainedTokenizerFast):
    pass
'''
