"""Sparse autoencoders in MLX: TopK or ReLU + L1, unit-norm decoder rows, and the bridge from a
learned feature to a `SteeringVector`.

Inputs are scaled by one scalar (`input_scale`, fixed from the data before training) so that
`E ||x * scale||^2 = d_model`; the same hyperparameters then suit every layer, whatever its norm.
`encode`/`decode` take and return raw activations; the scale is applied inside.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from mlux.atomic import PathLike, atomic_write_bytes, atomic_write_json
from mlux.layers import parse_hook_name
from mlux.vectors import SteeringVector

__all__ = ["SAE_CONFIG_NAME", "SAE_WEIGHTS_NAME", "SAEConfig", "SparseAutoencoder",
           "encode_activations", "feature_to_steering_vector"]

SAE_WEIGHTS_NAME = "sae.safetensors"
SAE_CONFIG_NAME = "sae.json"


@dataclass(frozen=True)
class SAEConfig:
    d_model: int
    num_latents: int
    kind: str = "topk"  # "topk" | "relu"
    k: int = 32  # active latents per row (topk)
    l1_coeff: float = 1e-3  # sparsity penalty (relu)
    input_scale: float = 1.0
    hook: Optional[str] = None
    position: str = "last"
    model_id: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("topk", "relu"):
            raise ValueError(f"SAE kind must be 'topk' or 'relu', got {self.kind!r}")
        if self.d_model < 1 or self.num_latents < 1:
            raise ValueError(f"d_model and num_latents must be >= 1, got {self.d_model}, "
                             f"{self.num_latents}")
        if self.kind == "topk" and not 1 <= self.k <= self.num_latents:
            raise ValueError(f"k must be in 1..num_latents ({self.num_latents}), got {self.k}")


class SparseAutoencoder(nn.Module):
    """`f = act((x - b_dec) W_enc + b_enc)`, `x_hat = f W_dec + b_dec`; `W_dec` rows unit-norm."""

    def __init__(self, config: SAEConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        key = mx.random.key(seed)
        w = mx.random.normal((config.num_latents, config.d_model), key=key)
        self.W_dec = w / mx.linalg.norm(w, axis=1, keepdims=True)
        self.W_enc = self.W_dec.T  # the usual init: encoder = decoder transpose
        self.b_enc = mx.zeros((config.num_latents,))
        self.b_dec = mx.zeros((config.d_model,))

    # -- in the scaled space used for training --------------------------------------------------
    def encode_scaled(self, x: mx.array) -> mx.array:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        acts = mx.maximum(pre, 0.0)
        if self.config.kind == "relu":
            return acts
        kth = mx.topk(pre, self.config.k, axis=-1).min(axis=-1, keepdims=True)
        return mx.where(pre >= kth, acts, 0.0)

    def decode_scaled(self, f: mx.array) -> mx.array:
        return f @ self.W_dec + self.b_dec

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        f = self.encode_scaled(x)
        return self.decode_scaled(f), f

    def normalize_decoder(self) -> None:
        """Project back onto the constraint: every latent's decoder row has norm 1."""
        self.W_dec = self.W_dec / mx.maximum(mx.linalg.norm(self.W_dec, axis=1, keepdims=True),
                                             1e-8)

    # -- on raw activations ---------------------------------------------------------------------
    def encode(self, x: Any) -> mx.array:
        """Feature activations `(..., num_latents)` of raw activations `(..., d_model)`."""
        x = mx.array(np.asarray(x, np.float32)) if not isinstance(x, mx.array) else x
        if x.shape[-1] != self.config.d_model:
            raise ValueError(f"activations have size {x.shape[-1]}; this SAE takes "
                             f"{self.config.d_model}")
        return self.encode_scaled(x.astype(mx.float32) * self.config.input_scale)

    def decode(self, f: mx.array) -> mx.array:
        return self.decode_scaled(f) / self.config.input_scale

    def reconstruct(self, x: Any) -> mx.array:
        return self.decode(self.encode(x))

    # -- files ----------------------------------------------------------------------------------
    def save(self, directory: PathLike, *, extra: Optional[dict[str, Any]] = None) -> Path:
        """`sae.safetensors` (weights) and `sae.json` (config, plus `extra` such as metrics)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(getattr(self, k))  # safetensors ignores strides
                  for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        meta = {"mlux_sae_config": json.dumps(asdict(self.config))}
        atomic_write_bytes(out / SAE_WEIGHTS_NAME, safetensors_bytes(arrays, metadata=meta))
        atomic_write_json(out / SAE_CONFIG_NAME, {"config": asdict(self.config), **(extra or {})})
        return out

    @classmethod
    def load(cls, directory: PathLike) -> SparseAutoencoder:
        path = Path(directory) / SAE_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no SAE at {directory}: {SAE_WEIGHTS_NAME} is missing")
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if "mlux_sae_config" not in meta:
                raise ValueError(f"{path} is not an mlux SAE (no config in its metadata)")
            sae = cls(SAEConfig(**json.loads(meta["mlux_sae_config"])))
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                setattr(sae, k, mx.array(f.get_tensor(k)))
        return sae


def encode_activations(sae: SparseAutoencoder, activations: Any) -> mx.array:
    """Feature activations of raw activations (same as `sae.encode`)."""
    return sae.encode(activations)


def feature_to_steering_vector(sae: SparseAutoencoder, feature: int, *,
                               layer: Optional[int] = None, scale: float = 0.5,
                               relative: bool = True) -> SteeringVector:
    """The feature's decoder direction as a one-layer steering vector.

    By default (`relative=True`) the vector's norm is `scale` times the mean norm of the
    activations the SAE was trained on (their root-mean-square norm, `sqrt(d_model) /
    input_scale`), so the default 0.5 steers on any model: a unit direction barely moves a
    residual stream whose norm is in the tens or hundreds. `relative=False`: the norm is `scale`.
    `layer` defaults to the SAE's hook point; vectors are added at `residuals_{layer}`.
    """
    n = sae.config.num_latents
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < n:
        raise ValueError(f"feature must be an int in 0..{n - 1}, got {feature!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    hook = sae.config.hook
    if layer is None:
        if hook is None:
            raise ValueError("this SAE has no hook point recorded; pass layer=")
        _, layer = parse_hook_name(hook, 10**6)
    reference = math.sqrt(sae.config.d_model) / sae.config.input_scale if relative else 1.0
    norm = scale * reference
    direction = sae.W_dec[feature] / mx.linalg.norm(sae.W_dec[feature]) * norm
    return SteeringVector({layer: direction}, model_id=sae.config.model_id, method="sae_feature",
                          metadata={"sae_hook": hook, "feature": feature, "scale": scale,
                                    "relative": relative, "norm": norm,
                                    "sae_kind": sae.config.kind, "position": sae.config.position})
