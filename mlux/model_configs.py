"""Model configs: which layers to steer for which behaviour, and how much memory a run takes."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

import mlx.nn as nn
from mlx.utils import tree_flatten

from .arch import detect_architecture, hidden_size_of

__all__ = [
    "BEHAVIORS",
    "MODEL_CONFIGS",
    "MemoryEstimate",
    "ModelConfig",
    "estimate_memory",
    "get_model_config",
    "infer_model_config",
]

BEHAVIORS = ("refusal", "uncertainty", "tool_restraint", "instruction_hierarchy")


@dataclass(frozen=True)
class ModelConfig:
    """Structure and recommended steering layers of one model. `recommended_layers["default"]`
    answers behaviours without their own entry."""

    name: str
    num_layers: int
    hidden_size: int
    recommended_layers: dict[str, list[int]] = field(default_factory=dict)
    num_parameters: Optional[int] = None
    notes: str = ""

    def get_recommended_layers(self, behavior: str = "default") -> list[int]:
        if behavior in self.recommended_layers:
            return list(self.recommended_layers[behavior])
        if behavior in BEHAVIORS or behavior == "default":
            return list(self.recommended_layers.get("default", _middle_third(self.num_layers)))
        raise ValueError(
            f"unknown behaviour {behavior!r}; known: {', '.join(('default', *BEHAVIORS))}"
            + (f" and {', '.join(sorted(set(self.recommended_layers) - {'default'}))}"
               if set(self.recommended_layers) - {"default", *BEHAVIORS} else "")
        )


def _middle_third(n: int) -> list[int]:
    lo, hi = n // 3, max(n // 3 + 1, (2 * n) // 3)
    return list(range(lo, hi))


def _span(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


def _cfg(name: str, layers: int, hidden: int, params: float, default: list[int],
         refusal: Optional[list[int]] = None, notes: str = "") -> ModelConfig:
    rec = {"default": default, "refusal": refusal if refusal is not None else default}
    return ModelConfig(name, layers, hidden, rec, int(params * 1e9), notes)


MODEL_CONFIGS: Mapping[str, ModelConfig] = MappingProxyType({c.name: c for c in (
    _cfg("Qwen/Qwen3-4B", 36, 2560, 4.02, _span(14, 18)),
    _cfg("Qwen/Qwen3-8B", 36, 4096, 8.19, _span(14, 18)),
    _cfg("Qwen/Qwen3-14B", 48, 5120, 14.8, _span(20, 24)),
    _cfg("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 48, 5120, 14.8, _span(20, 24)),
    _cfg("meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 8.03, _span(14, 16)),
    _cfg("meta-llama/Llama-3.1-70B-Instruct", 80, 8192, 70.6, _span(35, 40)),
    _cfg("mistralai/Mistral-7B-Instruct-v0.2", 32, 4096, 7.24, _span(12, 20)),
    _cfg("mistralai/Mistral-7B-Instruct-v0.3", 32, 4096, 7.25, _span(12, 20)),
    _cfg("google/gemma-2-9b-it", 42, 3584, 9.24, _span(14, 22)),
    _cfg("mlx-community/gemma-2-2b-it-4bit", 26, 2304, 2.61, _span(16, 20),
         notes="strongest steering around layers 16-20"),
    _cfg("mlx-community/Llama-3.2-3B-Instruct-4bit", 28, 3072, 3.21, _middle_third(28)),
    _cfg("mlx-community/Qwen2.5-3B-Instruct-4bit", 36, 2048, 3.09, _middle_third(36)),
    _cfg("mlux-toy", 6, 96, 0.0007, _span(2, 3), notes="the built-in trained toy model"),
    _cfg("mlux-toy-4bit", 6, 96, 0.0007, _span(2, 3), notes="4-bit built-in toy model"),
)})

_QUANT_SUFFIX = re.compile(r"(-(4|8|3|6)bit|-bf16|-fp16|-mlx|-dwq|-q4|-q8)+$", re.I)


def _base_key(name: str) -> str:
    tail = name.rsplit("/", 1)[-1]
    tail = _QUANT_SUFFIX.sub("", tail)
    return re.sub(r"^meta-", "", tail.lower())


def get_model_config(name: str) -> Optional[ModelConfig]:
    """Exact id first; then an `mlx-community/...-4bit` (or -8bit) id finds its base model."""
    if name in MODEL_CONFIGS:
        return MODEL_CONFIGS[name]
    lowered = {k.lower(): v for k, v in MODEL_CONFIGS.items()}
    if name.lower() in lowered:
        return lowered[name.lower()]
    key = _base_key(name)
    matches = [c for c in MODEL_CONFIGS.values() if _base_key(c.name) == key]
    return matches[0] if matches else None


def infer_model_config(model_or_hooked: Any, name: Optional[str] = None) -> ModelConfig:
    """By name when known (and consistent with the model), else from the model's structure with
    the middle third of layers as the default recommendation."""
    if isinstance(getattr(model_or_hooked, "model", None), nn.Module) and hasattr(
            model_or_hooked, "num_layers"):  # a HookedModel (not imported: it imports this)
        model, num_layers = model_or_hooked.model, model_or_hooked.num_layers
        hidden, name = model_or_hooked.hidden_size, name or model_or_hooked.model_id
    else:
        model = model_or_hooked
        arch = detect_architecture(model)
        num_layers, hidden = arch.num_layers, hidden_size_of(model, arch.blocks)
    known = get_model_config(name) if name else None
    if known is not None:
        if (known.num_layers, known.hidden_size) == (num_layers, hidden):
            return known
        warnings.warn(
            f"config for {known.name!r} says {known.num_layers} layers / hidden "
            f"{known.hidden_size}, the model has {num_layers} / {hidden}; "
            "inferring from the model instead",
            stacklevel=2,
        )
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    return ModelConfig(
        name=name or "unknown",
        num_layers=num_layers,
        hidden_size=hidden,
        recommended_layers={"default": _middle_third(num_layers)},
        num_parameters=params,
        notes="inferred from the model's structure (middle third of layers)",
    )


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    activation_bytes_per_token_per_point: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    def describe(self) -> str:
        gib = 1024**3
        return (f"weights ~{self.weights_bytes / gib:.2f} GiB, activations "
                f"{self.activation_bytes_per_token_per_point} B per token per hook point "
                f"(~{self.activation_bytes / gib:.3f} GiB for this run)")


def estimate_memory(config: ModelConfig, *, bits: int = 16, num_hook_points: int = 0,
                    num_tokens: int = 0, activation_bytes: int = 4) -> MemoryEstimate:
    """Weights at `bits` per parameter (+ group scales for quantized), activations as captured
    (float32 by default: mlux keeps captures in float32)."""
    params = config.num_parameters or 12 * config.num_layers * config.hidden_size**2
    overhead = 1.0 if bits >= 16 else 1 + 32 / (bits * 64)  # scale+bias per 64-group
    per_point = config.hidden_size * activation_bytes
    return MemoryEstimate(
        weights_bytes=int(params * bits / 8 * overhead),
        activation_bytes_per_token_per_point=per_point,
        activation_bytes=per_point * num_hook_points * num_tokens,
    )
