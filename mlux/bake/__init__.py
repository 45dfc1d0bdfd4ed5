"""Bake a steering vector or a directional ablation into the weights: the result is a plain
mlx-lm model folder that `mlx_lm.load` / `mlx_lm.generate` run with no mlux.

- `bake_ablation(hooked, vector, layers=None, out=DIR)` — weight orthogonalisation (Arditi et
  al. 2024, FailSpy's abliterator): one global unit direction `u`, the vector's direction at the
  chosen layer (`layers` names exactly one; a one-layer vector needs none), is projected out of
  every matrix that writes into the residual stream: the token (and position) embedding, every
  block's attention output projection and MLP down projection (every expert of an MoE) and their
  biases. The stream then never carries `u`: the baked model equals the original run with the
  ablation hook on the embedding output and on every attention and MLP output. A tied LM head is
  untied (written as `lm_head`, `tie_word_embeddings: false`) so it stays unchanged. Exact only
  for pre-norm blocks (`edits.ABLATION_ARCHS`); post-norm ones (gemma2, gemma3_text, olmo2) and
  classes that cannot untie (gemma, gpt2, cohere) are refused.
- `bake_steering(hooked, vector, alpha, layers=None, out=DIR)` — `alpha * v_L` added at
  `residuals_L` at every position, for each chosen layer `L` (default: all the vector's), baked
  as the bias of block `L`'s MLP output projection, its last write into the stream (llama's
  `mlp_bias` switch is set, the other biases are zero). Architectures: `edits.ADDITIVE_ARCHS`.

Quantized models: each edited matrix is dequantized, edited in float32 and requantized with its
own bits and group size (the error is reported); every other weight is copied bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import _get_classes, save_config, save_model

from ..atomic import atomic_write_dir
from ..builtin import builtin_model_path
from ..vectors import SteeringVector
from .edits import (
    ABLATION_ARCHS,
    ADDITIVE_ARCHS,
    ablate_weights,
    additive_bias_key,
    check_mode,
)

__all__ = ["ABLATION_ARCHS", "ADDITIVE_ARCHS", "bake_ablation", "bake_steering"]

_MODEL_FILES = ("config.json", "model.safetensors.index.json", "README.md")


def bake_ablation(hooked: Any, vector: Union[SteeringVector, str, Path], *,
                  layers: Optional[Union[int, Sequence[int]]] = None, out: Union[str, Path],
                  overwrite: bool = False, source: Optional[Union[str, Path]] = None
                  ) -> dict[str, Any]:
    """Write `hooked`'s model with the vector's direction ablated into its weights to `out`
    (see the module); returns the bake's summary (also in `out/README.md`)."""
    vec, config, src, model_type = _prepare(hooked, vector, out, overwrite, source, "ablate")
    chosen = _chosen_layers(vec, layers, hooked.num_layers)
    if len(chosen) != 1:
        raise ValueError(f"an ablation bakes one global direction; choose one layer of the "
                         f"vector's {vec.layers} with layers=/--layers (got {chosen})")
    d = vec[chosen[0]].astype(mx.float32)
    norm = float(mx.linalg.norm(d).item())
    if norm == 0.0:
        raise ValueError(f"the vector is zero at layer {chosen[0]}")
    weights = _weights(hooked)
    if "lm_head.weight" not in weights:  # untie: the head keeps the original embedding
        embed = next(k[:-len(".weight")] for k in weights
                     if k.endswith("embed_tokens.weight") or k.endswith("wte.weight"))
        for leaf in ("weight", "scales", "biases"):
            if f"{embed}.{leaf}" in weights:
                weights[f"lm_head.{leaf}"] = weights[f"{embed}.{leaf}"]
        config["tie_word_embeddings"] = False
    errors = ablate_weights(weights, config, d / norm, hooked.num_layers)
    summary = {"mode": "ablation", "direction_layer": chosen[0], "direction_norm": norm,
               "edited": sorted(errors), "requantization_error": _errors(errors)}
    return _write(out, src, weights, config, vec, summary, model_type)


def bake_steering(hooked: Any, vector: Union[SteeringVector, str, Path], alpha: float, *,
                  layers: Optional[Union[int, Sequence[int]]] = None, out: Union[str, Path],
                  overwrite: bool = False, source: Optional[Union[str, Path]] = None
                  ) -> dict[str, Any]:
    """Write `hooked`'s model with `alpha * v_L` added at `residuals_L` (every position, every
    chosen layer) baked into MLP output biases, to `out`; returns the bake's summary."""
    if alpha is None or not isinstance(alpha, (int, float)) or alpha != alpha:
        raise ValueError(f"additive baking needs a finite alpha, got {alpha!r}")
    vec, config, src, model_type = _prepare(hooked, vector, out, overwrite, source, "add")
    chosen = _chosen_layers(vec, layers, hooked.num_layers)
    weights = _weights(hooked)
    switch = ADDITIVE_ARCHS[model_type]
    if switch is not None and not config.get(switch, False):
        config[switch] = True
        _add_zero_biases(weights, config)
    for layer in chosen:
        key = additive_bias_key(weights, layer)
        b = weights[key]
        weights[key] = (b.astype(mx.float32) + float(alpha) * vec[layer]).astype(b.dtype)
    mx.eval(weights)
    summary = {"mode": "additive", "alpha": float(alpha), "layers": chosen,
               "norms": {str(i): vec.norms[i] for i in chosen}}
    return _write(out, src, weights, config, vec, summary, model_type)


def _prepare(hooked: Any, vector: Any, out: Union[str, Path], overwrite: bool,
             source: Any, mode: str) -> tuple[SteeringVector, dict, Path, str]:
    src = _source_dir(source if source is not None else hooked.model_id)
    config = json.loads((src / "config.json").read_text())
    model_type = str(config.get("model_type"))
    check_mode(model_type, mode)
    vec = vector if isinstance(vector, SteeringVector) else SteeringVector.load(vector)
    vec.check_compatible(hooked.hidden_size)
    target = Path(out).expanduser()
    if target.resolve() == src.resolve():
        raise ValueError(f"--out {target} is the source model's own folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ValueError(f"--out {target} exists and is not empty (pass --overwrite to "
                         "replace it)")
    if not target.parent.is_dir():
        raise ValueError(f"cannot write {target}: folder {target.parent} does not exist")
    return vec, config, src, model_type


def _source_dir(model_id: Any) -> Path:
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


def _chosen_layers(vec: SteeringVector, layers: Any, num_layers: int) -> list[int]:
    chosen = list(vec.layers) if layers is None else (
        [int(layers)] if isinstance(layers, int) else [int(i) for i in layers])
    chosen = [i + num_layers if i < 0 else i for i in chosen]
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{num_layers - 1}")
    missing = [i for i in chosen if i not in vec]
    if missing:
        raise ValueError(f"the vector has no direction at layers {missing}; it has {vec.layers}")
    return chosen


def _weights(hooked: Any) -> dict[str, mx.array]:
    """A new flat dict of the model's parameters (the arrays are shared until edited)."""
    return dict(tree_flatten(hooked.model.parameters()))


def _add_zero_biases(weights: dict[str, mx.array], config: dict[str, Any]) -> None:
    """Zeros for every bias the switched-on config adds (e.g. llama's gate/up/down biases)."""
    model_cls, args_cls = _get_classes(config)
    expected = dict(tree_flatten(model_cls(args_cls.from_dict(config)).parameters()))
    for k, v in expected.items():
        if k.endswith(".bias") and k not in weights:
            like = next(weights[k[:-5] + s] for s in (".scales", ".weight")
                        if k[:-5] + s in weights)
            dtype = like.dtype if mx.issubdtype(like.dtype, mx.floating) else mx.float32
            weights[k] = mx.zeros(v.shape, dtype=dtype)


def _errors(errors: dict[str, Optional[dict[str, float]]]) -> Optional[dict[str, Any]]:
    measured = {k: v for k, v in errors.items() if v is not None}
    if not measured:
        return None
    worst = max(measured.values(), key=lambda e: e["relative"])
    return {"max_relative": worst["relative"],
            "max_abs": max(e["max_abs"] for e in measured.values()), "per_matrix": measured}


def _write(out: Union[str, Path], src: Path, weights: dict[str, mx.array],
           config: dict[str, Any], vec: SteeringVector, summary: dict[str, Any],
           model_type: str) -> dict[str, Any]:
    summary = {**summary, "source_model": str(src), "model_type": model_type,
               "vector": {"model": vec.model_id, "method": vec.method, "layers": vec.layers,
                          "hidden_size": vec.hidden_size}}

    def write(tmp: Path) -> None:
        holder = nn.Module()
        for k, v in tree_unflatten(list(weights.items())).items():
            holder[k] = v
        save_model(tmp, holder)
        save_config(dict(config), config_path=tmp / "config.json")
        for f in src.iterdir():  # tokenizer, generation config, chat template, ...
            if f.is_file() and f.suffix != ".safetensors" and f.name not in _MODEL_FILES:
                shutil.copy2(f, tmp / f.name)
        (tmp / "README.md").write_text(_card(summary))
        (tmp / "mlux_bake.json").write_text(json.dumps(summary, indent=2) + "\n")

    atomic_write_dir(Path(out).expanduser(), write)
    return summary


def _card(s: dict[str, Any]) -> str:
    v = s["vector"]
    if s["mode"] == "ablation":
        what = (f"the direction of the vector at layer {s['direction_layer']} (norm "
                f"{s['direction_norm']:.4g}) projected out of every residual-stream write "
                "(embeddings, attention output projections, MLP down projections and their "
                "biases); the LM head is unchanged (untied if it was tied)")
        q = s["requantization_error"]
        if q:
            what += (f". Quantized matrices were requantized with their own bits and group "
                     f"size: worst relative error {q['max_relative']:.3g}, max abs "
                     f"{q['max_abs']:.3g}")
    else:
        what = (f"alpha {s['alpha']:g} times the vector added to the residual stream after "
                f"blocks {s['layers']} at every position, as the bias of each block's MLP "
                "output projection")
    return (f"---\nlibrary_name: mlx\ntags: [mlx, mlux-bake]\n---\n\n# Baked with mlux\n\n"
            f"Source model: `{s['source_model']}` ({s['model_type']}).\n\n"
            f"Baked ({s['mode']}): {what}.\n\nVector: model `{v['model']}`, method "
            f"`{v['method']}`, layers {v['layers']}, hidden size {v['hidden_size']}.\n\n"
            "Runs with plain mlx-lm, no mlux needed: `mlx_lm.generate --model THIS_FOLDER "
            "--prompt ...`. Full settings: `mlux_bake.json`.\n")
