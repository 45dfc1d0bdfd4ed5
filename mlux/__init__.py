"""mlux: MLX-native activation steering for mlx-lm models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .builtin import BUILTIN_MODELS, DEFAULT_MODEL
from .contrastive import ContrastiveSteering
from .extract import compute_steering_vector, extract_steering_vectors
from .generate import generate_batch, generate_from_cache, prefill_with_cache, stream_from_cache
from .hooks import Hook, HookContext, HookError, HookWrapper
from .layers import expand_layer_specs
from .model import HookedModel
from .model_configs import (
    MODEL_CONFIGS,
    ModelConfig,
    estimate_memory,
    get_model_config,
    infer_model_config,
)
from .steering import (
    Steering,
    create_ablation_hook,
    create_additive_hook,
    create_steering_hook,
    steering_hooks,
)
from .vector_library import VectorLibrary
from .vectors import SteeringVector

try:
    __version__ = version("mlux")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "MODEL_CONFIGS",
    "ContrastiveSteering",
    "Hook",
    "HookContext",
    "HookError",
    "HookWrapper",
    "HookedModel",
    "ModelConfig",
    "Steering",
    "SteeringVector",
    "VectorLibrary",
    "__version__",
    "compute_steering_vector",
    "create_ablation_hook",
    "create_additive_hook",
    "create_steering_hook",
    "default_model",
    "estimate_memory",
    "expand_layer_specs",
    "extract_steering_vectors",
    "generate_batch",
    "generate_from_cache",
    "get_model_config",
    "infer_model_config",
    "prefill_with_cache",
    "steering_hooks",
    "stream_from_cache",
]


def default_model(quantized: bool = False) -> HookedModel:
    """The built-in trained toy model (`mlux-toy`, or `mlux-toy-4bit`), loaded offline."""
    return HookedModel.from_pretrained("mlux-toy-4bit" if quantized else DEFAULT_MODEL)
