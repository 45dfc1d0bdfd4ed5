"""Tiny random instances of every model module of the installed mlx-lm, built from the module's
own `ModelArgs` with the small values of `module_configs` (nothing downloaded)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import pkgutil
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx_lm.models
from mlx_lm.utils import quantize_model

from .module_configs import MODULE_OVERRIDES, SMALL_FIELDS, UNSUPPORTED_MODULES
from .tiny_configs import ARCHITECTURES
from .tuned import make_tiny_model
from .weights import init_module_weights

__all__ = [
    "model_modules",
    "text_config_field",
    "tiny_model",
    "tiny_module_config",
    "unsupported_reason",
]

QUANT_GROUP = 32  # layers whose input width is not a multiple of this stay unquantized


def model_modules() -> list[str]:
    """Every module of the installed `mlx_lm.models` that defines `Model` and `ModelArgs`
    (modules that fail to import are included: they are listed with the reason)."""
    out = []
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        try:
            mod = _import(info.name)
        except BaseException:  # noqa: BLE001 - e.g. olmo calls sys.exit when hf_olmo is missing
            out.append(info.name)
            continue
        if hasattr(mod, "Model") and hasattr(mod, "ModelArgs"):
            out.append(info.name)
    return sorted(out)


def unsupported_reason(model_type: str) -> Optional[str]:
    """Why `model_type` cannot run a text forward here, or None."""
    return UNSUPPORTED_MODULES.get(model_type)


def _import(model_type: str) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # olmo prints an install hint
        return importlib.import_module(f"mlx_lm.models.{model_type}")


def text_config_field(model_type: str) -> bool:
    """Does the module's `ModelArgs` nest its language model's args in `text_config`?"""
    fields = {f.name for f in dataclasses.fields(_import(model_type).ModelArgs)}
    return "text_config" in fields


def tiny_module_config(model_type: str, **overrides: Any) -> dict[str, Any]:
    """A small config for `model_type`: `SMALL_FIELDS` for the fields its `ModelArgs`
    declares, then `MODULE_OVERRIDES[model_type]`, then `overrides`. A multimodal wrapper's
    `text_config` gets every small field (its text class keeps those it declares)."""
    fields = {f.name for f in dataclasses.fields(_import(model_type).ModelArgs)}
    cfg: dict[str, Any] = {"model_type": model_type}
    cfg.update({k: v for k, v in SMALL_FIELDS.items() if k in fields})
    extra = {**MODULE_OVERRIDES.get(model_type, {}), **overrides}
    if "text_config" in fields:
        cfg["text_config"] = {**SMALL_FIELDS, **extra.pop("text_config", {})}
    cfg.update(extra)
    return cfg


def _quantizable(model: nn.Module) -> Callable[[str, nn.Module], Any]:
    """The model's own quantization predicate, skipping layers whose `to_quantized` cannot
    take the `mode` mlx-lm passes (afm7's FusedLinear): those stay float."""
    own = getattr(model, "quant_predicate", None)

    def predicate(path: str, module: nn.Module) -> Any:
        if "mode" not in inspect.signature(module.to_quantized).parameters:
            return False
        return True if own is None else own(path, module)

    return predicate


def tiny_model(model_type: str, quantize: bool = False, *, seed: int = 0,
               **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A seeded random instance of `mlx_lm.models.<model_type>`: `(model, config)`.

    The 14 hand-tuned architectures (`ARCHITECTURES`) keep their `tiny_config`; every other
    module is built from `tiny_module_config`. `quantize=True` gives mlx-lm's own 4-bit
    `quantize_model` (group size 32). Raises ValueError for a module listed in
    `UNSUPPORTED_MODULES`, naming the reason.
    """
    reason = unsupported_reason(model_type)
    if reason is not None:
        raise ValueError(f"mlx_lm.models.{model_type} cannot run here: {reason}")
    if model_type in ARCHITECTURES:
        return make_tiny_model(model_type, quantize_bits=4 if quantize else None, seed=seed,
                               **overrides)
    config = tiny_module_config(model_type, **overrides)
    mod = _import(model_type)
    # Parameters that keep the module's own init (SSM decays, convolutions) draw from the
    # global generator while the model is built: seed it so the same arguments give the
    # same weights.
    mx.random.seed(seed)
    model = mod.Model(mod.ModelArgs.from_dict(config))
    weights = init_module_weights(model, seed)
    # The path of mlx_lm.load: sanitize (baichuan_m1 normalises its head here), strict load.
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    model.load_weights(list(weights.items()), strict=True)
    if quantize:
        with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints bits/weight
            model, config = quantize_model(model, config, QUANT_GROUP, 4,
                                           quant_predicate=_quantizable(model))
    model.eval()
    mx.eval(model.parameters())
    return model, config
