"""OpenAI's `stop` on a stream of tokens: the text is cut before the first stop string, which
may be split across tokens, so text that could begin one is held back until it cannot."""

from __future__ import annotations

from typing import Any, Sequence

from ..detokenize import RowText

__all__ = ["StopText"]


class StopText:
    """One row's text deltas with stop strings: `add(token)` returns the text now safe to send;
    `stopped` turns True when a stop string appeared (the row should end, reason "stop");
    `finish()` returns what is still held back once the row ended another way."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.row = RowText(tokenizer)
        self.stops = [s for s in stops if s]
        self.sent = 0  # characters of the text handed out so far
        self.stopped = False

    @property
    def ids(self) -> list[int]:
        return self.row.ids

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        self.row.add(token)
        text = self.row.text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(text, min(hits))
        return self._send(text, len(text) - self._held(text))

    def finish(self) -> str:
        """The rest of the text (held-back characters, an incomplete UTF-8 tail) at the end."""
        if self.stopped:
            return ""
        text = self.row.tokenizer.decode(self.row.ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return self._send(text, min(hits, default=len(text)))

    def _held(self, text: str) -> int:
        """The longest tail of `text` that is the start of a stop string (not a whole one)."""
        return max((k for s in self.stops for k in range(1, len(s))
                    if text.endswith(s[:k])), default=0)

    def _send(self, text: str, end: int) -> str:
        piece = text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece
