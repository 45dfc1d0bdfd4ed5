"""Loading a model: a built-in name, a local mlx-lm model directory, or a hub id, through
`mlx_lm.load` (or `mlx_lm.utils.sharded_load` across ranks); the file system is checked before
anything is taken for a hub id, so a mistyped path is one clear line, never the hub client's
traceback. Every model mlux loads goes through `resolve_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import mlx_lm

from .builtin import BUILTIN_MODELS, builtin_model_path

__all__ = ["load_model", "load_sharded", "resolve_model"]

_GGUF_MAGIC = b"GGUF"


def resolve_model(path_or_repo: Any) -> str:
    """What to hand mlx-lm for `path_or_repo`: a built-in model's or an existing local
    directory's path, or a hub id `org/name`. Anything else is a `ValueError` naming it: a
    missing path, a file (a GGUF model says mlx-lm cannot load GGUF), a folder without
    config.json."""
    if not isinstance(path_or_repo, str) or not path_or_repo.strip():
        raise ValueError("a model is a model directory, a hub id or a built-in name "
                         f"({', '.join(BUILTIN_MODELS)}); got {path_or_repo!r}")
    builtin = builtin_model_path(path_or_repo)
    local = Path(str(builtin) if builtin else path_or_repo).expanduser()
    if local.is_file():
        raise ValueError(_file_problem(path_or_repo, local))
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(
                f"{path_or_repo!r} is not an mlx-lm model directory: no config.json in "
                f"{local} (expected config.json, model*.safetensors and tokenizer files)"
            )
        return str(local)
    if path_or_repo.count("/") != 1 or path_or_repo.startswith((".", "/", "~")):
        raise ValueError(
            f"model {path_or_repo!r} not found: it is neither an existing model directory, a "
            f"built-in model ({', '.join(repr(m) for m in BUILTIN_MODELS)}) nor a hub id of "
            "the form 'org/name'"
        )
    return path_or_repo


def load_model(path_or_repo: str, **load_kwargs: Any) -> tuple[Any, Any]:
    """`(model, tokenizer)` from `mlx_lm.load`, with a clear error naming the model."""
    target = resolve_model(path_or_repo)
    try:
        model, tokenizer = mlx_lm.load(target, **load_kwargs)
    except Exception as e:  # the hub client raises many types; name the model either way
        raise ValueError(f"could not load model {path_or_repo!r}: {e}") from e
    return model, tokenizer


def load_sharded(path_or_repo: str, pipeline_group: Optional[Any] = None,
                 tensor_group: Optional[Any] = None) -> tuple[Any, Any]:
    """`(model, tokenizer)` from `mlx_lm.utils.sharded_load` (each rank loads only its own
    part), with the same checks and errors as `load_model`."""
    from mlx_lm.utils import sharded_load

    target = resolve_model(path_or_repo)
    try:
        return sharded_load(target, pipeline_group=pipeline_group, tensor_group=tensor_group)
    except Exception as e:  # as in load_model: one line naming the model
        raise ValueError(f"could not load model {path_or_repo!r} sharded: {e}") from e


def _file_problem(name: str, path: Path) -> str:
    """Why a file is not a model: GGUF is llama.cpp's format, not mlx-lm's."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        magic = b""
    if magic == _GGUF_MAGIC:
        return (f"{name!r} is a GGUF model file (llama.cpp's format); mlx-lm cannot load GGUF "
                "models: give an mlx-lm model directory or hub id, e.g. convert the original "
                "with `mlx_lm.convert --hf-path ORG/NAME`")
    return (f"{name!r} is a file; a model is an mlx-lm model directory (config.json, "
            "model*.safetensors, tokenizer files), a hub id or a built-in name")
