"""`SAEConfig`: what an SAE is, in SAELens's terms, and the hook-name mapping between SAELens
(`blocks.L.hook_resid_post`) and mlux (`residuals_L`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "SAEConfig", "to_mlux_hook", "to_saelens_hook"]

ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_TO_SAELENS = {"residuals": "hook_resid_post", "mlp": "hook_mlp_out", "attention": "hook_attn_out"}
_TO_MLUX = {v: k for k, v in _TO_SAELENS.items()}


def to_saelens_hook(hook: str) -> str:
    """`residuals_12` -> `blocks.12.hook_resid_post` (mlp_L: hook_mlp_out, attention_L:
    hook_attn_out)."""
    m = re.fullmatch(r"(residuals|mlp|attention)_(\d+)", hook)
    if m is None:
        raise ValueError(f"hook {hook!r} has no SAELens name; valid: residuals_L, mlp_L, "
                         "attention_L")
    return f"blocks.{m.group(2)}.{_TO_SAELENS[m.group(1)]}"


def to_mlux_hook(hook_name: Optional[str]) -> Optional[str]:
    """`blocks.12.hook_resid_post` -> `residuals_12`; None for names mlux has no hook for."""
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook_name or "")
    if m is None or m.group(2) not in _TO_MLUX:
        return None
    return f"{_TO_MLUX[m.group(2)]}_{m.group(1)}"


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is, in SAELens's terms (cfg.json), plus mlux's own `position` and
    `activation_norm` (the RMS norm of the training activations, the steering reference)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int = 32  # active latents per row (topk) or per row on average (batchtopk)
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False  # topk: rank pre * ||W_dec row||, decode f / it
    normalize_activations: str = "none"
    norm_scaling_factor: float = 1.0  # expected_average_only_in: inputs x this, outputs / this
    hook_name: Optional[str] = None  # SAELens name, e.g. blocks.12.hook_resid_post
    model_name: Optional[str] = None
    neuronpedia_id: Optional[str] = None
    position: str = "last"
    activation_norm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not supported; valid: "
                             f"{', '.join(ARCHITECTURES)}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations {self.normalize_activations!r} is not "
                             f"supported; valid: {', '.join(NORMALIZATIONS)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.architecture == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        if not (math.isfinite(self.norm_scaling_factor) and self.norm_scaling_factor > 0):
            raise ValueError(f"norm_scaling_factor must be a finite number > 0, got "
                             f"{self.norm_scaling_factor!r}")

    @property
    def hook(self) -> Optional[str]:
        """The mlux hook point (`residuals_L`, `mlp_L`, `attention_L`) or None."""
        return to_mlux_hook(self.hook_name)
