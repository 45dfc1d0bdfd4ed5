"""What `mlux info` (and the explorer) tell about a model: structure, precision, hook points."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from .bake import bake_support
from .model import HookedModel
from .model_configs import BEHAVIORS, estimate_memory

__all__ = ["WINDOWS", "block_pattern", "compact_hook_points", "features", "mixers",
           "model_info", "padded_batch_fallback"]

# Steering windows (`positions=`): every one applies to every architecture mlux wraps.
WINDOWS = ("all", "prompt", "generated", "an int k (from k on)", "a range (start, end)")


def block_pattern(hooked: HookedModel) -> str:
    """How a block combines its branches, measured on a probe input rather than read from a
    table: sequential pre-norm, parallel, or normalised branch outputs (post-norm/sandwich)."""
    if hooked.num_layers < 2 or "attention_1" not in hooked.hook_points:
        return "unknown"
    probe = mx.array([[1, 2, 3, 1]])
    names = ["residuals_0", "residuals_1", "attention_1", "mlp_1"]
    acts = hooked.capture(probe, names)
    total = acts["residuals_0"] + acts["attention_1"] + acts["mlp_1"]
    scale = float(mx.abs(acts["residuals_1"]).max().item()) or 1.0
    if float(mx.abs(total - acts["residuals_1"]).max().item()) > 1e-3 * scale:
        return "normalised branch outputs (post-norm / sandwich)"
    moved = hooked.capture(probe, ["mlp_1"], hooks={"attention_1": lambda x, c: x + 1.0})
    if mx.array_equal(moved["mlp_1"], acts["mlp_1"]).item():
        return "parallel: x + attn(norm(x)) + mlp(norm(x))"
    return "sequential pre-norm: h = x + attn(norm(x)); out = h + mlp(norm(h))"


def compact_hook_points(names: list[str]) -> list[str]:
    """['residuals_0', 'residuals_1', ...] -> ['residuals_0-1', ...] (per kind, runs merged)."""
    out = []
    for kind in ("residuals", "attention", "mlp"):
        idx = sorted(int(n.rsplit("_", 1)[1]) for n in names if n.startswith(kind + "_"))
        runs: list[list[int]] = []
        for i in idx:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        out += [f"{kind}_{a}" if a == b else f"{kind}_{a}-{b}" for a, b in runs]
    return out


def mixers(hooked: HookedModel) -> dict[str, list[int]]:
    """What `attention_i` names, per submodule name: `{"self_attn": [3, 7], "linear_attn":
    [0, 1, 2, ...]}` on a hybrid stack (its linear-attention / SSM / conv mixers); blocks with
    no single mixer (no `attention_i`) under `"none"`."""
    out: dict[str, list[int]] = {}
    for i, name in enumerate(hooked.arch.attention_names):
        out.setdefault(name or "none", []).append(i)
    return out


def padded_batch_fallback(hooked: HookedModel) -> str:
    """Why left-padded rows run one by one on this model ('' when they run as one batch)."""
    return "" if hooked.supports_padded_batch() else hooked.padded_batch_reason


def features(hooked: HookedModel) -> dict[str, Any]:
    """Which of mlux's features apply to this model, and why not where one doesn't."""
    bake = {mode: bake_support(hooked, kind) or "yes"
            for mode, kind in (("add", "additive"), ("ablate", "ablation"))}
    fallback = padded_batch_fallback(hooked)
    streams = hooked.arch.stream_axis
    return {
        "padded_batching": "one masked batch" if not fallback else f"row by row: {fallback}",
        "bake": bake,
        "windows": list(WINDOWS),
        "residual_streams": ("one" if streams is None else
                             f"several (axis {streams}): residuals_i is their mean; a hook's "
                             "change is added to every stream"),
    }


def model_info(hooked: HookedModel) -> dict[str, Any]:
    """A JSON-able summary of the model for `mlux info`, the explorer and result files."""
    cfg = hooked.config
    q = hooked.quantization
    bits = q["bits"] if q else {mx.float32: 32, mx.float16: 16, mx.bfloat16: 16}.get(
        hooked.dtype, 16)
    mem = estimate_memory(cfg, bits=bits, num_hook_points=hooked.num_layers, num_tokens=1024)
    return {
        "model_id": hooked.model_id,
        "model_type": hooked.model_type,
        "num_layers": hooked.num_layers,
        "hidden_size": hooked.hidden_size,
        "blocks_path": hooked.arch.blocks_path,
        "block_pattern": block_pattern(hooked),
        "quantization": q,
        "dtype": str(hooked.dtype).replace("mlx.core.", ""),
        "hook_points": hooked.hook_points,
        "hook_points_compact": compact_hook_points(hooked.hook_points),
        "attention_names": {k: compact_hook_points([f"attention_{i}" for i in v])
                            for k, v in mixers(hooked).items()},
        "features": features(hooked),
        "config_name": cfg.name,
        "config_notes": cfg.notes,
        "recommended_layers": {b: cfg.get_recommended_layers(b) for b in ("default", *BEHAVIORS)},
        "memory": {
            "weights_bytes": mem.weights_bytes,
            "activation_bytes_per_token_per_point": mem.activation_bytes_per_token_per_point,
            "all_residuals_1024_tokens_bytes": mem.activation_bytes,
        },
    }
