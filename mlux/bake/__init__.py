"""Bake a steering vector or a directional ablation into the weights: the result is a plain
mlx-lm model folder that `mlx_lm.load` / `mlx_lm.generate` run with no mlux.

- `bake_ablation(hooked, vector, layers=None, out=DIR)` — weight orthogonalisation (Arditi et
  al. 2024, FailSpy's abliterator): one global unit direction `u`, the vector's direction at the
  chosen layer (`layers` names exactly one; a one-layer vector needs none), is projected out of
  every matrix that writes into the residual stream (`writers.find_writers`): the token (and
  position) embeddings, every block's attention / mixer output projection, its MLP output
  projection — for a mixture of experts every routed expert, fused `SwitchLinear` included, and
  every shared expert — and their biases. The stream then never carries `u`: the baked model
  equals the original run with the ablation hook on the embedding output and on every attention
  and MLP output. A tied LM head is untied so it stays unchanged. With `layer_weights` ({block:
  w}, a `mlux search --mode ablate` trial's: `search_weights`), block i's outputs lose only
  w_i of the direction and the embeddings none, as the search's hooks do (`weighted`).
- `bake_steering(hooked, vector, alpha, layers=None, out=DIR)` — `alpha * v_L` added at
  `residuals_L` at every position, for each chosen layer `L` (default: all the vector's), baked
  as the bias of block `L`'s MLP output projection, its last write into the stream (a config
  switch such as llama's `mlp_bias` is turned on if needed, the other new biases are zero).
- `bake_support(hooked, mode)` — None if `mode` ("ablation" or "additive") bakes exactly into
  this model, else the reason it is refused (post-norm blocks, a head that cannot be untied, an
  MoE block for additive baking, a module mlux cannot place, ...).

Every bake is checked before anything is written: the edited weights are loaded the way
`mlx_lm.load` loads them and run on a probe (ablation: the direction's component left in the
stream at every layer; additive and weighted ablation: the logits against the hooked
original); a bake that is not exact is refused. Quantized models: each edited matrix is
dequantized, edited in float32, requantized with its own bits and group size, its rounding
chosen to keep the direction out (`edits`, `rounding`); the component left and the error are
reported; every other weight is copied bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..experiments.options import load_vector  # the one loader of vector files
from ..vectors import SteeringVector
from .checks import (
    bias_config,
    checked,
    class_parameters,
    load_baked,
    measure_ablation,
    measure_additive,
    refusal,
    stream_check,
    untied_head,
)
from .edits import ablate_weights, requant_summary
from .folder import check_target, model_card, model_name, source_dir, write_folder
from .weighted import bake_weighted, checked_weights, search_weights
from .writers import Writers, find_writers

__all__ = ["MODES", "bake_ablation", "bake_steering", "bake_support", "search_weights"]

MODES = ("ablation", "additive")
_ALIASES = {"ablation": "ablation", "ablate": "ablation", "additive": "additive",
            "add": "additive", "steering": "additive"}


def bake_support(hooked: Any, mode: str, *, source: Optional[Union[str, Path]] = None
                 ) -> Optional[str]:
    """None if `mode` ("ablation" or "additive") bakes exactly into `hooked`'s model, else
    why not (one sentence, the message `bake_ablation` / `bake_steering` would refuse with).
    `source`: the model's folder, if `hooked.model_id` does not name it."""
    kind = _mode(mode)
    try:
        config = _config(source_dir(source if source is not None else hooked.model_id))
        _plan(hooked, config, kind, _weights(hooked), list(range(hooked.num_layers)), None)
    except ValueError as e:
        return str(e)
    return None


def bake_ablation(hooked: Any, vector: Union[SteeringVector, str, Path], *,
                  layers: Optional[Union[int, Sequence[int]]] = None, out: Union[str, Path],
                  overwrite: bool = False, source: Optional[Union[str, Path]] = None,
                  layer_weights: Optional[Mapping[int, float]] = None) -> dict[str, Any]:
    """Write `hooked`'s model with the vector's direction ablated into its weights to `out`
    (see the module); returns the bake's summary (also in `out/mlux_bake.json`).
    `layer_weights` ({block: w}, e.g. a search trial's, `weighted.search_weights`): only block
    i's attention and MLP outputs lose w_i of the direction, the embeddings none (`weighted`)."""
    vec, config, src, target = _prepare(hooked, vector, out, overwrite, source)
    per_layer = None if layer_weights is None else checked_weights(layer_weights,
                                                                     hooked.num_layers)
    chosen = _chosen_layers(vec, layers, hooked.num_layers)
    if len(chosen) != 1:
        raise ValueError(f"an ablation bakes one global direction; choose one layer of the "
                         f"vector's {vec.layers} with layers=/--layers (got {chosen})")
    d = np.asarray(vec[chosen[0]].astype(mx.float32), dtype=np.float64)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError(f"the vector is zero at layer {chosen[0]}")
    unit = mx.array((d / norm).astype(np.float32))
    weights = _weights(hooked)
    writers, config = _plan(hooked, config, "ablation", weights, chosen, unit,
                            untie=per_layer is None)
    about = {"mode": "ablation", "direction_layer": chosen[0], "direction_norm": norm}
    if per_layer is not None:
        summary = bake_weighted(hooked, config, weights, writers, unit, per_layer)
        return _write(target, hooked, src, weights, config, vec, {**about, **summary})
    if writers.head is None:  # untie: the head keeps the original embedding
        head, embed = untied_head(config, weights, writers)
        for leaf in ("weight", "scales", "biases"):
            if f"{embed}.{leaf}" in weights:
                weights[f"{head}.{leaf}"] = weights[f"{embed}.{leaf}"]
        config = {**config, "tie_word_embeddings": False}
    edits = ablate_weights(weights, config, unit, writers.embeddings, writers.outputs)
    left = checked(hooked, "ablation",
                   lambda: measure_ablation(hooked, load_baked(config, weights, hooked), unit))
    quantized = {k: e for k, e in edits.items() if e is not None}
    worst = max(range(len(left)), key=lambda i: left[i])
    limit = 0.5 if quantized else 1e-3 if hooked.dtype == mx.float32 else 5e-2
    if left[worst] > limit:
        raise refusal(hooked, "ablation", f"the edited weights leave {left[worst]:.3g} of the "
                      f"direction's component in the stream at layer {worst} (limit {limit}): "
                      "mlux has not found every residual writer of this architecture")
    summary = {**about, "edited": sorted(edits), "remaining_component": {
                   "max": left[worst], "per_layer": left},
               "requantization": requant_summary(quantized)}
    return _write(target, hooked, src, weights, config, vec, summary)


def bake_steering(hooked: Any, vector: Union[SteeringVector, str, Path], alpha: float, *,
                  layers: Optional[Union[int, Sequence[int]]] = None, out: Union[str, Path],
                  overwrite: bool = False, source: Optional[Union[str, Path]] = None
                  ) -> dict[str, Any]:
    """Write `hooked`'s model with `alpha * v_L` added at `residuals_L` (every position, every
    chosen layer) baked into MLP output biases, to `out`; returns the bake's summary."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(
            alpha):
        raise ValueError(f"additive baking needs a finite alpha, got {alpha!r}")
    vec, config, src, target = _prepare(hooked, vector, out, overwrite, source)
    chosen = _chosen_layers(vec, layers, hooked.num_layers)
    weights = _weights(hooked)
    writers, config = _plan(hooked, config, "additive", weights, chosen, None)
    fresh = None
    for layer in chosen:
        key = f"{writers.last_writes[layer]}.bias"
        if key not in weights:  # a bias the switched-on config adds: zeros, like the others
            fresh = fresh or _class_biases(config, weights)
            weights.update(fresh)
        b = weights[key]
        new = (b.astype(mx.float32) + float(alpha) * vec[layer].astype(mx.float32)
               ).astype(b.dtype)
        if not bool(mx.isfinite(new).all()):
            dtype = str(b.dtype).rpartition(".")[2]
            raise ValueError(f"alpha {alpha:g} times the vector at layer {layer} overflows "
                             f"{dtype} (largest |v| {float(mx.abs(vec[layer]).max()):.3g}): "
                             "choose a smaller alpha")
        weights[key] = new
    mx.eval(weights)
    error = checked(hooked, "additive", lambda: measure_additive(
        hooked, load_baked(config, weights, hooked), vec, float(alpha), chosen))
    limit = 1e-4 if hooked.dtype == mx.float32 and hooked.quantization is None else 2e-2
    if not math.isfinite(error):
        raise ValueError(f"at alpha {alpha:g} the steered model's logits are not finite (the "
                         "stream overflows): choose a smaller alpha")
    if error > limit:
        raise refusal(hooked, "additive", f"the baked logits differ from the steered "
                       f"original by {error:.3g} (limit {limit})")
    summary = {"mode": "additive", "alpha": float(alpha), "layers": chosen,
               "norms": {str(i): float(np.linalg.norm(np.asarray(vec[i], dtype=np.float64)))
                         for i in chosen}, "logit_error": error}
    return _write(target, hooked, src, weights, config, vec, summary)


def _mode(mode: str) -> str:
    if mode not in _ALIASES:
        raise ValueError(f"unknown bake mode {mode!r}; valid: {', '.join(MODES)}")
    return _ALIASES[mode]


def _config(src: Path) -> dict[str, Any]:
    return json.loads((src / "config.json").read_text())


def _plan(hooked: Any, config: dict[str, Any], kind: str, weights: dict[str, mx.array],
          layers: list[int], unit: Optional[mx.array], untie: bool = True
          ) -> tuple[Writers, dict[str, Any]]:
    """The writers to edit and the config to write; raises the refusal if not exact
    (`untie`: the embedding is edited, so a tied head must be untied)."""
    try:
        writers = find_writers(hooked)
        moe = [i for i in layers if writers.last_writes[i] is None]
        if kind == "additive" and moe:
            raise ValueError(f"block {moe[0]}'s MLP is a mixture of experts: a bias on an "
                             "expert is scaled by its routing weight")
        if unit is None:  # any direction shows a post-norm block; a fixed one, reproducibly
            unit = mx.random.normal((hooked.hidden_size,), key=mx.random.key(7))
            unit = unit / mx.linalg.norm(unit)
        why = stream_check(hooked, unit, additive=kind == "additive")
        if why is not None:
            raise ValueError(why)
        if kind == "ablation" and untie and writers.head is None:
            untied_head(config, weights, writers)
        if kind == "additive":
            config = bias_config(config, weights, [writers.last_writes[i] for i in layers])
    except ValueError as e:
        raise refusal(hooked, kind, str(e)) from e
    return writers, config


def _prepare(hooked: Any, vector: Any, out: Union[str, Path], overwrite: bool,
             source: Any) -> tuple[SteeringVector, dict, Path, Path]:
    src = source_dir(source if source is not None else hooked.model_id)
    target = check_target(out, src, overwrite)
    if isinstance(vector, SteeringVector):
        vector.check_compatible(hooked.hidden_size, hooked.num_layers)
        vec = vector
    else:
        vec = load_vector(str(vector), hooked)
    return vec, _config(src), src, target


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


def _class_biases(config: dict[str, Any], weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Zeros for every bias the switched-on config adds (e.g. llama's gate/up/down biases)."""
    out: dict[str, mx.array] = {}
    for k, v in class_parameters(config).items():
        if k.endswith(".bias") and k not in weights:
            like = next(weights[k[:-5] + s] for s in (".scales", ".weight")
                        if k[:-5] + s in weights)
            dtype = like.dtype if mx.issubdtype(like.dtype, mx.floating) else mx.float32
            out[k] = mx.zeros(v.shape, dtype=dtype)
    return out


def _write(target: Path, hooked: Any, src: Path, weights: dict[str, mx.array],
           config: dict[str, Any], vec: SteeringVector, summary: dict[str, Any]
           ) -> dict[str, Any]:
    summary = {**summary, "source_model": model_name(hooked.model_id, src),
               "model_type": hooked.model_type,
               "vector": {"model": vec.model_id, "method": vec.method, "layers": vec.layers,
                          "hidden_size": vec.hidden_size}}
    return write_folder(target, src, weights, config, summary, model_card)
