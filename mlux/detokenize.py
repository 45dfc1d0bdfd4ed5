"""Streaming text from token ids, one row at a time (explorer and server streams)."""

from __future__ import annotations

from typing import Any

__all__ = ["RowText"]


class RowText:
    """Incremental detokenisation of one row: each token's new text, held back while the
    decoded text ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        full = self.tokenizer.decode(self.ids)
        if full.endswith("\ufffd"):
            self.pieces.append("")
            return ""
        piece = full[len(self.text):] if full.startswith(self.text) else full
        self.text = full
        self.pieces.append(piece)
        return piece
