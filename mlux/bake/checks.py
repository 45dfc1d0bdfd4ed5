"""Whether a bake can be exact, decided on the model itself, and proof that it was.

- `stream_check`: run the original with the ablation hook on every attention and MLP output;
  if the blocks only add those outputs to the stream, the stream's component along a direction
  stays what the embedding put there at every layer. Where it does not (post-norm / sandwich
  norm blocks, extra terms), a weight edit cannot equal a stream edit, and the bake is refused.
- `untied_head` / `bias_config`: what the model's mlx-lm class can hold (a separate LM head, a
  bias on the MLP output projection), found by building the class from the edited config.
- `build` + `measure_ablation` / `measure_additive` / `measure_weighted`: the edited weights
  loaded the way `mlx_lm.load` loads them, run on a probe and compared with the hooked
  original; `checked` / `refusal`: a failed or inexact bake as the one refusal message.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, TypeVar

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes, infer_quant_config

from ..model import HookedModel
from ..steering import (
    create_ablation_hook,
    create_steering_hook,
    steering_hooks,
    weighted_ablation_hooks,
)
from .writers import Writers

__all__ = ["BIAS_SWITCHES", "bias_config", "build", "checked", "class_parameters",
           "load_baked", "logit_error", "measure_ablation", "measure_additive",
           "measure_weighted", "probe_tokens", "refusal", "stream_check", "untied_head"]

T = TypeVar("T")
# Config switches with which mlx-lm classes give their linear layers biases.
BIAS_SWITCHES = ("mlp_bias", "use_bias", "bias", "add_bias_linear", "use_mlp_bias")


def probe_tokens(hooked: Any, length: int = 12) -> mx.array:
    """A fixed `(2, length)` batch of ordinary token ids (not the first four specials)."""
    vocab = int(hooked.vocab_size or 32)
    ids = [[4 + (7 * t + 13 * r) % max(vocab - 4, 1) for t in range(length)] for r in range(2)]
    return mx.array(ids)


def _components(acts: dict[str, mx.array], unit: mx.array, num_layers: int) -> mx.array:
    return mx.stack([acts[f"residuals_{i}"].astype(mx.float32) @ unit
                     for i in range(num_layers)])  # (L, B, T)


def stream_check(hooked: Any, unit: mx.array, additive: bool = False) -> Optional[str]:
    """None if the blocks add their attention and MLP outputs to the stream unchanged, as far
    as the bake needs (measured on a probe), else the reason they do not. Ablation: removing
    `unit` from every attention and MLP output keeps the stream's component along it constant.
    Additive (`additive`): adding `unit` to each block's MLP output (its mixer's if it has no
    MLP) equals adding it to the block's output."""
    try:
        if additive:
            return _mlp_joins_unchanged(hooked, unit)
        return _component_kept(hooked, unit)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the bake cannot be checked
        first = (str(e).splitlines() or [""])[0]
        return f"running it with mlux's hooks on a probe failed ({type(e).__name__}: {first})"


def _mlp_joins_unchanged(hooked: Any, unit: mx.array) -> Optional[str]:
    tokens = probe_tokens(hooked)
    n, names = hooked.num_layers, set(hooked.hook_points)
    # As large as the stream itself, so the difference stands far above 16-bit rounding.
    size = mx.mean(mx.stack([mx.linalg.norm(a.astype(mx.float32), axis=-1).mean()
                             for a in hooked.capture(tokens, "all").values()]))
    v = unit * size
    last = [f"mlp_{i}" if f"mlp_{i}" in names else f"attention_{i}" for i in range(n)]
    at_mlp = hooked.run_with_hooks(tokens, [(p, create_steering_hook(v)) for p in last])
    at_block = hooked.run_with_hooks(tokens, steering_hooks(v, 1.0, layers=range(n)))
    plain = hooked.run_with_hooks(tokens, [])
    moved, diff = _max_diff(at_block, plain), _max_diff(at_mlp, at_block)
    if moved == 0.0:
        return "steering its blocks' outputs through mlux's hooks does not change its logits"
    tol = 1e-3 if hooked.dtype == mx.float32 else 5e-2
    if diff <= tol * max(moved, 1e-30):
        return None
    return ("a vector added to a block's MLP output is not the same vector added to the "
            "block's output: the block normalises or transforms the MLP output after computing "
            "it (post-norm / sandwich norm), so a bias there is not an addition to the stream")


def _max_diff(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max())


def _component_kept(hooked: Any, unit: mx.array) -> Optional[str]:
    tokens = probe_tokens(hooked)
    plain = hooked.capture(tokens, "all")
    if any(a.ndim != 3 for a in plain.values()):
        shape = next(a.shape for a in plain.values() if a.ndim != 3)
        return (f"it keeps more than one residual stream per token (shape {shape}), and mixes "
                "them with weights mlux cannot edit")
    hook = create_ablation_hook(unit)
    hooks = [(n, hook) for n in hooked.hook_points if not n.startswith("residuals_")]
    ablated = hooked.capture(tokens, "all", hooks=hooks)
    n = hooked.num_layers
    moved = mx.abs(_components(plain, unit, n) - _components(plain, unit, n)[0]).max(axis=(1, 2))
    kept = mx.abs(_components(ablated, unit, n) - _components(ablated, unit, n)[0]).max(
        axis=(1, 2))
    tol = 1e-3 if hooked.dtype == mx.float32 else 5e-2
    bad = [i for i in range(n) if float(kept[i]) > tol * max(float(moved.max()), 1e-30)]
    if not bad:
        return None
    return (f"block {bad[0]} changes the stream's component along a direction even when its "
            "attention and MLP outputs carry none of it: the block normalises or transforms "
            "those outputs after computing them (post-norm / sandwich norm) or adds other "
            "terms, so editing the weights is not editing the residual stream")


def class_parameters(config: dict[str, Any]) -> dict[str, mx.array]:
    """The parameters (lazy, never evaluated) of the mlx-lm class built from `config`."""
    model_cls, args_cls = _get_classes(config)
    return dict(tree_flatten(model_cls(args_cls.from_dict(config)).parameters()))


def untied_head(config: dict[str, Any], weights: dict[str, mx.array],
                writers: Writers) -> tuple[str, str]:
    """`(head path, embedding path)`: where the class keeps a separate LM head once
    `tie_word_embeddings` is off, and the embedding it copies; raises if it cannot."""
    fresh = class_parameters({**config, "tie_word_embeddings": False})
    new = [k[:-len(".weight")] for k in fresh if k.endswith(".weight") and k not in weights]
    if len(new) == 1:
        rows = int(fresh[f"{new[0]}.weight"].shape[0])  # the vocabulary
        token = [e for e in writers.embeddings if int(weights[f"{e}.weight"].shape[0]) == rows]
        if len(token) == 1:
            return new[0], token[0]
    raise ValueError("its mlx-lm class always unembeds with the input embedding (it has no "
                     "separate LM head even with tie_word_embeddings off), so the embedding "
                     "cannot be edited without changing the LM head")


def bias_config(config: dict[str, Any], weights: dict[str, mx.array],
                projections: list[str]) -> dict[str, Any]:
    """`config`, with a bias switch turned on if the projections need one to exist."""
    if all(f"{p}.bias" in weights for p in projections):
        return config
    rejected = []
    for key in BIAS_SWITCHES:
        trial = {**config, key: True}
        fresh = class_parameters(trial)
        new = [k for k in fresh if k not in weights]
        if all(f"{p}.bias" in fresh for p in projections) and all(
                k.endswith(".bias") for k in new):
            why = _config_refused(config, trial)
            if why is None:
                return trial
            rejected.append(f"{key}: true ({why})")
    if rejected:
        raise ValueError(f"the config switch that adds a bias to {projections[0]} makes a "
                         f"config transformers refuses, so mlx_lm.load could not load the "
                         f"folder: {'; '.join(rejected)}")
    raise ValueError(f"its mlx-lm class has no bias on the MLP output projection "
                     f"{projections[0]} (no config switch among {', '.join(BIAS_SWITCHES)} "
                     "adds one), so there is nothing to hold the added vector")


def _config_refused(source: dict[str, Any], edited: dict[str, Any]) -> Optional[str]:
    """Why transformers' own config class refuses `edited` when it takes `source` (mlx_lm.load
    reads the config through it for the tokenizer), else None."""
    from transformers import AutoConfig  # mlx-lm's own dependency

    def refusal(config: dict[str, Any]) -> Optional[str]:
        fields = {k: v for k, v in config.items() if k not in ("model_type", "quantization")}
        try:
            AutoConfig.for_model(config["model_type"], **fields)
        except Exception as exc:  # an unknown model type, or the class's own validation
            return f"{type(exc).__name__}: {str(exc).splitlines()[-1][:160]}"
        return None

    return None if refusal(source) is not None else refusal(edited)


def build(config: dict[str, Any], weights: dict[str, mx.array]) -> nn.Module:
    """The model `mlx_lm.load` would make of `config` + `weights` (sanitize, quantize the
    layers that have scales, strict load), sharing the arrays."""
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(dict(weights))
    if (q := config.get("quantization")) is not None:
        def predicate(p: str, m: nn.Module) -> Any:  # mlx_lm.utils.load_model's own rule
            if p in q:
                return q[p]
            if not hasattr(m, "to_quantized") or f"{p}.scales" not in weights:
                return False
            return infer_quant_config(p, m, weights)

        nn.quantize(model, group_size=q["group_size"], bits=q["bits"],
                    mode=q.get("mode", "affine"), class_predicate=predicate)
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model


def measure_ablation(hooked: Any, baked: Any, unit: mx.array) -> list[float]:
    """Per layer, the direction's component left in the baked model's stream, relative to the
    original's (RMS over the probe's positions)."""
    tokens = probe_tokens(hooked)
    n = hooked.num_layers
    before = _components(hooked.capture(tokens, "all"), unit, n)
    after = _components(baked.capture(tokens, "all"), unit, n)
    rms = lambda c: mx.sqrt(mx.mean(c * c, axis=(1, 2)))  # noqa: E731 - (L,)
    return [float(x) for x in (rms(after) / mx.maximum(rms(before), 1e-30)).tolist()]


def measure_additive(hooked: Any, baked: Any, vector: Any, alpha: float,
                     layers: list[int]) -> float:
    """Relative error of the baked logits against the original steered by mlux's hooks."""
    return logit_error(hooked, baked, steering_hooks(vector, alpha, layers=layers))


def measure_weighted(hooked: Any, baked: Any, unit: mx.array,
                     layer_weights: dict[int, float]) -> float:
    """Relative error of the baked logits against the original run with the weighted ablation
    hooks `mlux search` tries (`weighted_ablation_hooks`; `baked=hooked`: the unedited
    model's own error)."""
    points = set(hooked.hook_points)
    return logit_error(hooked, baked, [(n, h) for n, h in weighted_ablation_hooks(
        unit, layer_weights) if n in points])


def logit_error(hooked: Any, baked: Any, hooks: list[tuple[str, Any]]) -> float:
    """Relative error (Frobenius) of `baked`'s plain logits on the probe against `hooked`'s
    with `hooks`; inf if the hooked logits are not finite."""
    tokens = probe_tokens(hooked)
    reference = hooked.run_with_hooks(tokens, hooks)
    got = baked.run_with_hooks(tokens, [])
    if not bool(mx.isfinite(reference).all()):
        return math.inf  # the steering itself overflows
    diff = (got.astype(mx.float32) - reference.astype(mx.float32)).reshape(-1)
    return float((mx.linalg.norm(diff) / mx.linalg.norm(
        reference.astype(mx.float32).reshape(-1))).item())


def load_baked(config: dict[str, Any], weights: dict[str, mx.array], hooked: Any) -> Any:
    """The edited weights as a `HookedModel`, built the way `mlx_lm.load` builds them."""
    return HookedModel(build(config, weights), hooked.tokenizer)


def refusal(hooked: Any, kind: str, why: str) -> ValueError:
    """The error a bake of `kind` ("ablation" / "additive") is refused with, and what to do."""
    what = "an ablation" if kind == "ablation" else "an additive vector"
    other = ("steer at run time with mlux's ablation hook" if kind == "ablation" else
             "export the vector as a llama.cpp control vector (`mlux extract --output V.gguf`) "
             "or steer at run time")
    return ValueError(f"cannot bake {what} into {hooked.model_type!r} exactly: {why} "
                      f"(instead: {other})")


def checked(hooked: Any, kind: str, measure: Callable[[], T]) -> T:
    """`measure()`, its failure (whatever the model's code raises) turned into the refusal."""
    try:
        return measure()
    except Exception as e:  # noqa: BLE001 - an unverifiable bake is refused, never half-done
        first = (str(e).splitlines() or [""])[0]
        raise refusal(hooked, kind, "the edited weights could not be loaded and run the way "
                      f"mlx_lm.load would ({type(e).__name__}: {first})") from e
