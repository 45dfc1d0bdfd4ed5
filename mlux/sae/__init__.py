"""Sparse autoencoders: one `SparseAutoencoder` for the SAELens architectures (standard, JumpReLU,
TopK, BatchTopK), SAELens folders both ways and Gemma Scope `params.npz`, training on collected
activations (`train_saes`, the `mlux train-sae` verb), SAELens's quality metrics (FVE, L0, dead
latents, CE-loss recovered and KL with the SAE spliced in) and steering by feature.

    from mlux.sae import SparseAutoencoder, clamp_hook
    sae = SparseAutoencoder.load("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82")
    idx, val = sae.features(acts, k=5)                      # top-5 features per token
    with hooked.hooks([(sae.config.hook, clamp_hook(sae, 1234, 8.0))]): ...
    Steering(sae_clamp=(sae, 1234, 8.0))                     # per row, on the one decoder
"""

from __future__ import annotations

from .config import ARCHITECTURES, NORMALIZATIONS, SAEConfig, to_mlux_hook, to_saelens_hook
from .fit import FewStepsWarning, SAETrainResult, train_sae
from .metrics import evaluate_sae, spliced_metrics
from .model import SparseAutoencoder
from .runs import train_saes
from .steer import clamp_hook, feature_to_steering_vector

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "FewStepsWarning",
    "SAEConfig",
    "SAETrainResult",
    "SparseAutoencoder",
    "clamp_hook",
    "evaluate_sae",
    "feature_to_steering_vector",
    "spliced_metrics",
    "to_mlux_hook",
    "to_saelens_hook",
    "train_sae",
    "train_saes",
]
