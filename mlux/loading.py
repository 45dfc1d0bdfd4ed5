"""Loading a model: a built-in name, a local mlx-lm model directory, or a hub id, through
`mlx_lm.load`; the file system is checked before anything is taken for a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx_lm

from .builtin import builtin_model_path

__all__ = ["load_model"]


def load_model(path_or_repo: str, **load_kwargs: Any) -> tuple[Any, Any]:
    """`(model, tokenizer)` from `mlx_lm.load`, with a clear error naming the model."""
    if not isinstance(path_or_repo, str) or not path_or_repo.strip():
        raise ValueError("from_pretrained needs a model directory, a hub id or a built-in name")
    builtin = builtin_model_path(path_or_repo)
    target = str(builtin) if builtin else path_or_repo
    local = Path(target).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(
                f"{path_or_repo!r} is not an mlx-lm model directory: no config.json in "
                f"{local} (expected config.json, model*.safetensors and tokenizer files)"
            )
        target = str(local)
    elif path_or_repo.count("/") != 1 or path_or_repo.startswith((".", "/", "~")):
        raise ValueError(
            f"{path_or_repo!r} is neither an existing model directory, a built-in model "
            "('mlux-toy', 'mlux-toy-4bit') nor a hub id of the form 'org/name'"
        )
    try:
        model, tokenizer = mlx_lm.load(target, **load_kwargs)
    except Exception as e:  # the hub client raises many types; name the model either way
        raise ValueError(f"could not load model {path_or_repo!r}: {e}") from e
    return model, tokenizer

