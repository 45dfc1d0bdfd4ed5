"""Write a word-level tokenizer that `mlx_lm.load` reads offline.

Used by the shipped toy model and by the tiny test models: no tokenizer can be downloaded here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

__all__ = ["SPECIAL_TOKENS", "write_word_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def write_word_tokenizer(
    words: Sequence[str],
    out_dir: str | Path,
    *,
    chat_template: str | None = None,
) -> dict[str, int]:
    """Write `tokenizer.json` and `tokenizer_config.json` for a whitespace word vocabulary.

    Ids 0-3 are `<pad> <unk> <bos> <eos>`, then `words` in order (duplicates dropped).
    Returns the vocabulary (token -> id).
    """
    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"tokenizer word {w!r} is empty or contains whitespace")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab
