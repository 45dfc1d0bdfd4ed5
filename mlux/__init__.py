"""mlux: MLX-native activation steering for mlx-lm models.

The pipeline, top-down: load and wrap (`HookedModel`), hook (`HookedModel.hooks`), capture
(`HookedModel.capture`), extract (`extract_steering_vectors` -> `SteeringVector`), steer
(`create_steering_hook`, `steering_hooks`, `Steering`, `ContrastiveSteering`) and decode
(`prefill_with_cache`, `generate_from_cache`, `generate_batch`). Everything else lives in its
submodule (`mlux.decode`, `mlux.vector_library`, `mlux.collect`, `mlux.serve`, ...).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .condition_search import find_condition_point
from .conditions import Condition
from .contrastive import ContrastiveSteering
from .extract import compute_steering_vector, extract_steering_vectors
from .generate import generate_batch, generate_from_cache, prefill_with_cache, stream_from_cache
from .hooks import Hook, HookContext, HookWrapper
from .layers import expand_layer_specs
from .model import HookedModel
from .model_configs import MODEL_CONFIGS, ModelConfig, get_model_config, infer_model_config
from .steering import Steering, create_additive_hook, create_steering_hook, steering_hooks
from .vectors import SteeringVector

try:
    __version__ = version("mlux")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = [
    "MODEL_CONFIGS",
    "ContrastiveSteering",
    "Hook",
    "HookContext",
    "HookWrapper",
    "HookedModel",
    "ModelConfig",
    "Steering",
    "SteeringVector",
    "__version__",
    "compute_steering_vector",
    "create_additive_hook",
    "create_steering_hook",
    "expand_layer_specs",
    "extract_steering_vectors",
    "generate_batch",
    "generate_from_cache",
    "get_model_config",
    "infer_model_config",
    "prefill_with_cache",
    "steering_hooks",
    "stream_from_cache",
    # conditional steering (CAST); rules (any_of, all_of, not_) are in mlux.conditions
    "Condition",
    "find_condition_point",
]
