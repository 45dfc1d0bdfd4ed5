"""The models mlux ships as package data, reachable by name: no download is ever needed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "builtin_model_path"]

DEFAULT_MODEL = "mlux-toy"
BUILTIN_MODELS = ("mlux-toy", "mlux-toy-4bit")
_MODELS_DIR = Path(__file__).resolve().parent / "models"


def builtin_model_path(name: str) -> Optional[Path]:
    """The directory of a shipped model (`mlux-toy`, `mlux-toy-4bit`), or None for other names."""
    if name not in BUILTIN_MODELS:
        return None
    path = _MODELS_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"built-in model {name!r} is missing from the installed package ({path}); "
            "reinstall mlux or run experiments/toy_model/train.py"
        )
    return path
