"""One sparse-autoencoder type for the SAELens architectures: standard (ReLU), JumpReLU, TopK and
BatchTopK, with SAELens's input handling (`apply_b_dec_to_input`, `normalize_activations`).

    pre = (norm_in(x) - b_dec * apply_b_dec_to_input) @ W_enc + b_enc         # (..., d_sae)
    f   = act(pre)      # relu | relu(pre) * (pre > threshold) | top-k of pre, relu'd | batch top-k
    x^  = norm_out((f * scaling_factor) @ W_dec + b_dec, x)                      # (..., d_in)

`encode`/`decode` take and return raw activations; `encode_normalized`/`forward_normalized` work
in the normalised space that training uses. Files: `mlux.sae.formats` (`load`/`save` here).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlux.atomic import PathLike
from mlux.hooks import Hook

from .config import SAEConfig
from .formats import read_sae, write_sae
from .steer import Clamp, row_clamp_hook

__all__ = ["SparseAutoencoder"]

_LN_EPS = 1e-5  # SAELens's layer_norm epsilon


class SparseAutoencoder(nn.Module):
    """Weights `W_enc (d_in, d_sae)`, `W_dec (d_sae, d_in)`, `b_enc`, `b_dec`, and where the
    architecture has them `threshold (d_sae,)` and `scaling_factor (d_sae,)`."""

    def __init__(self, config: SAEConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        w = mx.random.normal((config.d_sae, config.d_in), key=mx.random.key(seed))
        self.W_dec = w / mx.linalg.norm(w, axis=1, keepdims=True)
        self.W_enc = self.W_dec.T  # the usual init: encoder = decoder transpose
        self.b_enc = mx.zeros((config.d_sae,))
        self.b_dec = mx.zeros((config.d_in,))
        if config.architecture == "jumprelu":
            self.threshold = mx.zeros((config.d_sae,))
        # Optional weights (batchtopk's threshold, SAELens's per-feature `scaling_factor`) are
        # entries of the module only when present: `self.get(name)` is None otherwise.

    # -- normalised space (training) ------------------------------------------------------------
    def encode_normalized(self, x: mx.array) -> mx.array:
        """Features of already-normalised inputs `(..., d_in)` -> `(..., d_sae)`."""
        bias = self.b_dec if self.config.apply_b_dec_to_input else 0.0
        pre = (x - bias) @ self.W_enc + self.b_enc
        if self.config.rescale_acts_by_decoder_norm:
            pre = pre * mx.linalg.norm(self.W_dec, axis=-1)
        arch = self.config.architecture
        if arch == "standard":
            return mx.maximum(pre, 0.0)
        if arch == "jumprelu" or (arch == "batchtopk" and "threshold" in self):
            return mx.where(pre > self.threshold, mx.maximum(pre, 0.0), 0.0)
        if arch == "topk":
            kth = mx.topk(pre, self.config.k, axis=-1).min(axis=-1, keepdims=True)
            return mx.where(pre >= kth, mx.maximum(pre, 0.0), 0.0)
        # batchtopk without a learned threshold: the k * rows largest of the whole batch
        acts = mx.maximum(pre, 0.0)
        flat = acts.reshape(-1)
        keep = min(flat.size, self.config.k * max(1, flat.size // self.config.d_sae))
        kth = mx.topk(flat, keep).min()
        return mx.where(acts >= kth, acts, 0.0)

    def _feature_scale(self) -> Optional[mx.array]:
        """What features are multiplied by before the decoder: SAELens's finetuning
        `scaling_factor`, and 1 / ||W_dec row|| when TopK acts were rescaled by it."""
        sf = self.get("scaling_factor")
        if self.config.rescale_acts_by_decoder_norm:
            inv = 1.0 / mx.linalg.norm(self.W_dec, axis=-1)
            sf = inv if sf is None else sf * inv
        return sf

    def decode_normalized(self, f: mx.array) -> mx.array:
        sf = self._feature_scale()
        return (f if sf is None else f * sf) @ self.W_dec + self.b_dec

    def forward_normalized(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(reconstruction, features) of normalised inputs: the training forward."""
        f = self.encode_normalized(x)
        return self.decode_normalized(f), f

    def normalize_decoder(self) -> None:
        """Project back onto the constraint: every latent's decoder row has norm 1."""
        self.W_dec = self.W_dec / mx.maximum(mx.linalg.norm(self.W_dec, axis=1, keepdims=True),
                                             1e-8)

    # -- raw activations ------------------------------------------------------------------------
    def _checked(self, x: Any) -> mx.array:
        x = x if isinstance(x, mx.array) else mx.array(np.asarray(x, np.float32))
        if x.shape[-1] != self.config.d_in:
            raise ValueError(f"activations have size {x.shape[-1]}; this SAE takes d_in "
                             f"{self.config.d_in}")
        return x.astype(mx.float32)

    def _norm_in(self, x: mx.array) -> tuple[mx.array, Any]:
        """Normalised input and what `_norm_out` needs to undo it."""
        mode = self.config.normalize_activations
        if mode == "constant_norm_rescale":
            c = math.sqrt(self.config.d_in) / mx.linalg.norm(x, axis=-1, keepdims=True)
            return x * c, c
        if mode == "layer_norm":
            mu = x.mean(axis=-1, keepdims=True)
            centred = x - mu
            std = mx.sqrt(mx.square(centred).sum(-1, keepdims=True) / max(1, x.shape[-1] - 1))
            return centred / (std + _LN_EPS), (mu, std)  # torch's unbiased std, as SAELens
        if mode == "expected_average_only_in":
            return x * self.config.norm_scaling_factor, self.config.norm_scaling_factor
        return x, None

    def _norm_out(self, y: mx.array, stats: Any, *, shift: bool = True) -> mx.array:
        mode = self.config.normalize_activations
        if mode == "layer_norm":
            mu, std = stats
            return y * std + (mu if shift else 0.0)
        if mode in ("constant_norm_rescale", "expected_average_only_in"):
            return y / stats
        return y

    def encode(self, x: Any) -> mx.array:
        """Feature activations `(..., d_sae)` of raw activations `(..., d_in)`."""
        return self.encode_normalized(self._norm_in(self._checked(x))[0])

    def decode(self, f: mx.array, x: Optional[Any] = None) -> mx.array:
        """Raw activations from features. Normalisations that depend on each input's own norm
        (constant_norm_rescale, layer_norm) need the activations `x` that `f` came from."""
        if self.config.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ValueError(f"decode needs x=: normalize_activations "
                                 f"{self.config.normalize_activations!r} undoes each "
                                 "input's own scale")
            stats = self._norm_in(self._checked(x))[1]
        else:
            stats = self.config.norm_scaling_factor
        return self._norm_out(self.decode_normalized(f), stats)

    def forward(self, x: Any) -> mx.array:
        """The reconstruction of raw activations."""
        x = self._checked(x)
        xn, stats = self._norm_in(x)
        return self._norm_out(self.decode_normalized(self.encode_normalized(xn)), stats)

    def reconstruct(self, x: Any) -> mx.array:
        return self.forward(x)

    def decoder_delta(self, df: mx.array, x: mx.array) -> mx.array:
        """`decode(f + df, x) - decode(f, x)`: the decoder is affine, so only `df` matters."""
        sf = self._feature_scale()
        return self.output_delta((df if sf is None else df * sf) @ self.W_dec, x)

    def output_delta(self, y: mx.array, x: mx.array) -> mx.array:
        """A change `y` of the normalised reconstruction as a change of the raw one, for the
        activations `x`."""
        return self._norm_out(y, self._norm_in(x)[1], shift=False)

    def decoder_row(self, feature: int) -> mx.array:
        """Feature `feature`'s contribution per unit activation, in the normalised space."""
        sf = self._feature_scale()
        return self.W_dec[feature] * (1.0 if sf is None else sf[feature])

    def features(self, acts: Any, k: int) -> tuple[mx.array, mx.array]:
        """The `k` most active features per row: (indices, values), each `(..., k)`, largest
        first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.d_sae:
            raise ValueError(f"k must be an int in 1..{self.config.d_sae}, got {k!r}")
        f = self.encode(acts)
        idx = mx.argsort(-f, axis=-1)[..., :k]
        return idx, mx.take_along_axis(f, idx, axis=-1)

    def fold_scaling(self) -> SparseAutoencoder:
        """Fold `expected_average_only_in`'s factor s into the weights (W_enc * s, W_dec / s,
        b_dec / s), as SAELens does: the same encodings, and normalisation "none"."""
        if self.config.normalize_activations != "expected_average_only_in":
            return self
        if self.config.rescale_acts_by_decoder_norm:  # decoder norms cannot carry 1 / s
            raise ValueError("cannot fold norm_scaling_factor into an SAE with "
                             "rescale_acts_by_decoder_norm: its features would change")
        s = self.config.norm_scaling_factor
        self.W_enc, self.W_dec, self.b_dec = self.W_enc * s, self.W_dec / s, self.b_dec / s
        self.config = replace(self.config, normalize_activations="none", norm_scaling_factor=1.0)
        return self

    def row_clamp_hook(self, clamps: Sequence[Clamp], starts: Sequence[float],
                       ends: Sequence[float]) -> Hook:
        """The per-row clamp hook the decoder installs for `Steering(sae_clamp=...)` terms
        (`mlux.sae.steer.row_clamp_hook`)."""
        return row_clamp_hook(self, clamps, starts, ends)

    def check_model(self, hidden_size: int, num_layers: Optional[int] = None) -> None:
        """ValueError unless this SAE fits a model of this width (and depth)."""
        if self.config.d_in != hidden_size:
            raise ValueError(f"d_in is {self.config.d_in} but the model's hidden size is "
                             f"{hidden_size}")
        hook = self.config.hook
        if num_layers is not None and hook is not None:
            layer = int(hook.rsplit("_", 1)[1])
            if layer >= num_layers:
                raise ValueError(f"hook_name {self.config.hook_name!r} is layer {layer}; the "
                                 f"model has {num_layers} layers")

    # -- files ----------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """The weights by SAELens key, float32 numpy."""
        keys = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "scaling_factor")
        return {k: np.asarray(self[k], dtype=np.float32) for k in keys if self.get(k) is not None}

    def save(self, path: PathLike, format: str = "saelens",  # noqa: A002 - the API's name
             *, extra: Optional[dict[str, Any]] = None) -> Path:
        """Write a SAELens folder (cfg.json + sae_weights.safetensors, `extra` as mlux.json),
        replaced as a whole; an `expected_average_only_in` factor is folded in first (SAELens
        loads such folders without applying one)."""
        if format != "saelens":
            raise ValueError(f"format {format!r} is not supported; valid: saelens")
        sae = self
        if self.config.normalize_activations == "expected_average_only_in":
            sae = SparseAutoencoder.from_weights(self.config, self.weights()).fold_scaling()
        return write_sae(path, sae.config, sae.weights(), extra=extra)

    @classmethod
    def from_weights(cls, config: SAEConfig, weights: dict[str, Any]) -> SparseAutoencoder:
        sae = cls(config)
        for k, v in weights.items():
            sae[k] = mx.array(np.asarray(v, dtype=np.float32))
        return sae

    @classmethod
    def load(cls, path: PathLike, *, hidden_size: Optional[int] = None,
             hook_name: Optional[str] = None) -> SparseAutoencoder:
        """A SAELens folder, or a Gemma Scope `params.npz` (file, or folder holding one).
        `hidden_size`: refuse an SAE whose d_in differs; `hook_name` for files without one."""
        config, weights = read_sae(path, hook_name=hook_name)
        sae = cls.from_weights(config, weights)
        if hidden_size is not None:
            sae.check_model(hidden_size)
        return sae
