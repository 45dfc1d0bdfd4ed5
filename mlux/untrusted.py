"""Quoting untrusted values (config entries, file headers, request fields) in error messages:
``repr`` cut to a bound, so a hostile value can never flood a message or a terminal."""

from __future__ import annotations

from typing import Any

__all__ = ["short"]


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
