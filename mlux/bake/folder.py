"""Where a bake reads and writes: the source model's folder, a checked `--out`, and the baked
folder itself (weights, config, the tokenizer files, a model card and `mlux_bake.json`),
written atomically so a failed bake leaves nothing and a replaced folder nothing behind."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from typing import Any, Callable, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten
from mlx_lm.utils import save_config, save_model

from ..atomic import atomic_write_dir, atomic_write_json, atomic_write_text
from ..builtin import builtin_model_path

__all__ = ["KEPT_FILES", "check_target", "model_card", "model_name", "source_dir",
           "write_folder"]

# Files of the source that still describe the baked model: the tokenizer and generation
# settings. The rest (its model card, mlux's steering table and training report, ...) describe
# the unbaked weights and are dropped; `mlux_bake.json` lists them.
KEPT_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
              "merges.txt", "*.model", "*.tiktoken", "chat_template*", "*.jinja",
              "generation_config.json", "*.py")


def source_dir(model_id: Any) -> Path:
    """The folder a model was loaded from: a built-in name, a local folder or a cached hub id."""
    if model_id is None:
        raise ValueError("the model's folder is unknown; pass source=DIR")
    builtin = builtin_model_path(str(model_id))
    path = builtin or Path(str(model_id)).expanduser()
    if not path.exists():
        from huggingface_hub import snapshot_download  # already fetched by mlx_lm.load
        path = Path(snapshot_download(str(model_id), local_files_only=True))
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not an mlx-lm model folder")
    return path


def model_name(model_id: Any, src: Path) -> str:
    """How the card names the source: its built-in or hub id, or a local folder's name — never
    an install path."""
    text = str(model_id) if model_id is not None else src.name
    return src.name if Path(text).expanduser().is_dir() else text


def check_target(out: Union[str, Path], src: Path, overwrite: bool) -> Path:
    """`out` as a path, refused if it is, contains or lies inside the source model (a
    replacement would delete it), or exists non-empty without `overwrite`."""
    target = Path(out).expanduser()
    t = target.resolve()
    # The source's files may be links into another folder (a hub cache's blobs).
    for s in {src.resolve(), *(f.resolve().parent for f in src.iterdir())}:
        if t == s or t in s.parents or s in t.parents:
            how = "is" if t == s else "contains" if t in s.parents else "lies inside"
            raise ValueError(f"--out {target} {how} the source model's folder {s}; writing "
                             "there would replace the source: choose another --out")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ValueError(f"--out {target} exists and is not empty (pass --overwrite to "
                         "replace it)")
    if not target.parent.is_dir():
        raise ValueError(f"cannot write {target}: folder {target.parent} does not exist")
    return target


def _kept(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in KEPT_FILES)


def write_folder(target: Path, src: Path, weights: dict[str, mx.array], config: dict[str, Any],
                 summary: dict[str, Any], card: Callable[[dict[str, Any]], str]
                 ) -> dict[str, Any]:
    """Write the baked model folder; returns `summary` with the dropped source files added."""
    files = sorted(f for f in src.iterdir() if f.is_file() and f.suffix != ".safetensors"
                   and f.name not in ("config.json", "model.safetensors.index.json"))
    summary = {**summary, "dropped_files": [f.name for f in files if not _kept(f.name)]}

    def write(tmp: Path) -> None:
        # Strict JSON first: a non-finite number fails here, before the weights are written.
        atomic_write_json(tmp / "mlux_bake.json", summary)
        holder = nn.Module()
        for k, v in tree_unflatten(list(weights.items())).items():
            holder[k] = v
        save_model(tmp, holder)
        save_config(dict(config), config_path=tmp / "config.json")
        for f in files:  # tokenizer, generation config, chat template, ...
            if _kept(f.name):
                shutil.copy2(f, tmp / f.name)
        atomic_write_text(tmp / "README.md", card(summary))

    atomic_write_dir(target, write)
    return summary


def model_card(s: dict[str, Any]) -> str:
    """The README.md of a baked folder, from the bake's summary."""
    v = s["vector"]
    if s["mode"] == "ablation" and "layer_weights" in s:
        shown = ", ".join(f"{i}: {w:.3g}" for i, w in s["layer_weights"].items()) or "none"
        what = (f"the direction of the vector at layer {s['direction_layer']} (norm "
                f"{s['direction_norm']:.4g}) partly projected out of each block's attention and "
                f"MLP output projections (and their biases), by the per-layer weights {{{shown}}}"
                "; embeddings and LM head unchanged. The logits equal the original run with "
                f"mlux's weighted ablation hooks (relative error {s['logit_error']:.3g}")
        what += (", the requantized matrices' rounding chosen to keep the edit's component)"
                 if s["requantization"] else ")")
    elif s["mode"] == "ablation":
        what = (f"the direction of the vector at layer {s['direction_layer']} (norm "
                f"{s['direction_norm']:.4g}) projected out of every residual-stream write "
                "(embeddings, attention output projections, MLP down projections, every expert "
                "and their biases); the LM head is unchanged (untied if it was tied)")
        if (q := s["requantization"]):
            what += (f". Quantized matrices were requantized with their own bits and group "
                     f"size, the rounding chosen to keep the direction out: worst relative "
                     f"error {q['max_relative']:.3g}, "
                     f"direction's component left in the stream at most "
                     f"{s['remaining_component']['max']:.3g} of the original")
    else:
        what = (f"alpha {s['alpha']:g} times the vector added to the residual stream after "
                f"blocks {s['layers']} at every position, as the bias of each block's MLP "
                "output projection")
    dropped = (f"\n\nNot copied from the source (they describe the unbaked weights): "
               f"{', '.join(s['dropped_files'])}." if s["dropped_files"] else "")
    return (f"---\nlibrary_name: mlx\ntags: [mlx, mlux-bake]\n---\n\n# Baked with mlux\n\n"
            f"Source model: `{s['source_model']}` ({s['model_type']}).\n\n"
            f"Baked ({s['mode']}): {what}.\n\nVector: model `{v['model']}`, method "
            f"`{v['method']}`, layers {v['layers']}, hidden size {v['hidden_size']}.{dropped}"
            "\n\nRuns with plain mlx-lm, no mlux needed: `mlx_lm.generate --model THIS_FOLDER "
            "--prompt ...`. Full settings: `mlux_bake.json`.\n")
