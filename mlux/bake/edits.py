"""The weight edits behind `mlux.bake`: which parameters write into the residual stream, how a
direction is projected out of them, and how a quantized matrix is edited (dequantize, edit in
float32, requantize with its own bits and group size, measure the error).

Everything here works on a flat `{name: array}` dict of one model's parameters (the names
`mlx_lm.load` reads back) and a raw config dict; nothing is loaded or written.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import mlx.core as mx

__all__ = ["ABLATION_ARCHS", "ADDITIVE_ARCHS", "ablate_weights", "additive_bias_key",
           "check_mode", "embedding_prefixes", "writer_prefixes"]

# Pre-norm blocks (x + attn(norm(x)), + mlp(norm(.))) whose mlx-lm class can hold a separate LM
# head, so editing a tied embedding need not change the head.
ABLATION_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "phi3", "starcoder2",
                  "gpt_bigcode")
# Architecture -> the config switch that gives the block's MLP output projection a bias (None:
# it always has one).
ADDITIVE_ARCHS: dict[str, Optional[str]] = {"llama": "mlp_bias", "mistral": "mlp_bias",
                                            "gpt_bigcode": "mlp_bias", "starcoder2": None,
                                            "gpt2": None}
_POST_NORM = ("gemma2", "gemma3_text", "olmo2")
_TIED_ONLY = ("gemma", "gpt2", "cohere")  # the mlx-lm class always unembeds with the embedding

_EMBEDDINGS = re.compile(r"^(.*\.)?(embed_tokens|wte|wpe)$")
_WRITERS = re.compile(r"^(?:.*\.)?(\d+)\.(self_attn\.o_proj|attn\.c_proj|mlp\.down_proj|"
                      r"mlp\.c_proj|mlp\.switch_mlp\.down_proj)$")


def check_mode(model_type: str, mode: str) -> None:
    """Refuse an architecture that cannot take `mode` ("ablate" or "add"), saying why."""
    if mode == "ablate":
        if model_type in ABLATION_ARCHS:
            return
        if model_type in _POST_NORM:
            why = ("its blocks normalise the attention and MLP outputs after they are computed "
                   "(post-norm / sandwich norm), so removing the direction from the weights is "
                   "not the same as removing it from the residual stream")
        elif model_type in _TIED_ONLY:
            why = ("its mlx-lm class always unembeds with the input embedding, so the embedding "
                   "cannot be edited without changing the LM head")
        else:
            why = "mlux does not know where its weights write into the residual stream"
        raise ValueError(f"cannot bake an ablation into {model_type!r}: {why}; ablation bakes "
                         f"exactly into {', '.join(ABLATION_ARCHS)} (or steer at run time with "
                         "mlux's ablation hook)")
    if model_type not in ADDITIVE_ARCHS:
        raise ValueError(
            f"cannot bake an additive vector into {model_type!r}: its mlx-lm class has no bias "
            "on the block's last write into the residual stream; additive baking works for "
            f"{', '.join(ADDITIVE_ARCHS)}. Alternatives: export the vector as a llama.cpp "
            "control vector (`mlux extract --output V.gguf`) or bake an ablation (--ablate)")


def embedding_prefixes(weights: dict[str, mx.array]) -> list[str]:
    """Module paths of the embeddings that write into the residual stream (token, position)."""
    prefixes = {k.rpartition(".")[0] for k in weights}
    return sorted(p for p in prefixes if _EMBEDDINGS.match(p))


def writer_prefixes(weights: dict[str, mx.array], num_layers: int) -> list[str]:
    """Module paths of each block's attention and MLP output projections (MoE: all experts in
    one stacked matrix); refuse unless every block has exactly these two."""
    found: dict[int, list[str]] = {}
    for p in sorted({k.rpartition(".")[0] for k in weights}):
        if (m := _WRITERS.match(p)):
            found.setdefault(int(m.group(1)), []).append(p)
    bad = [i for i in range(num_layers) if len(found.get(i, [])) != 2]
    if bad or len(found) != num_layers:
        raise ValueError(f"expected one attention and one MLP output projection per block, "
                         f"found {found.get(bad[0] if bad else 0)} at block {bad[:1]}")
    return [p for i in range(num_layers) for p in found[i]]


def additive_bias_key(weights: dict[str, mx.array], layer: int) -> str:
    """The bias of block `layer`'s MLP output projection (the block's last residual write)."""
    keys = [k for k in weights if k.endswith(".bias") and (m := _WRITERS.match(k[:-5]))
            and int(m.group(1)) == layer and m.group(2).startswith("mlp.")]
    if len(keys) != 1:
        raise ValueError(f"found no MLP output bias for block {layer}")
    return keys[0]


def _quant_params(config: dict[str, Any], prefix: str) -> tuple[int, int, str]:
    q = config.get("quantization") or config.get("quantization_config") or {}
    own = q.get(prefix)
    q = own if isinstance(own, dict) else q
    return int(q.get("group_size", 64)), int(q.get("bits", 4)), str(q.get("mode", "affine"))


def _edit_matrix(weights: dict[str, mx.array], prefix: str, config: dict[str, Any],
                 edit: Callable[[mx.array], mx.array]) -> Optional[dict[str, float]]:
    """Replace `prefix.weight` by `edit(weight)` computed in float32. A quantized weight is
    dequantized first and requantized after with its own group size and bits; returns the
    requantisation error then (relative Frobenius norm, max abs), else None."""
    w = weights[f"{prefix}.weight"]
    scales = weights.get(f"{prefix}.scales")
    if scales is None:
        weights[f"{prefix}.weight"] = edit(w.astype(mx.float32)).astype(w.dtype)
        return None
    group_size, bits, mode = _quant_params(config, prefix)
    if mode != "affine":
        raise ValueError(f"{prefix} is quantized in mode {mode!r}; bake edits affine only")
    biases = weights[f"{prefix}.biases"]
    dense = mx.dequantize(w, scales, biases, group_size=group_size, bits=bits)
    edited = edit(dense.astype(mx.float32))
    qw, qs, qb = mx.quantize(edited, group_size=group_size, bits=bits)
    weights[f"{prefix}.weight"] = qw
    weights[f"{prefix}.scales"] = qs.astype(scales.dtype)
    weights[f"{prefix}.biases"] = qb.astype(biases.dtype)
    back = mx.dequantize(qw, weights[f"{prefix}.scales"], weights[f"{prefix}.biases"],
                         group_size=group_size, bits=bits).astype(mx.float32)
    diff = back - edited
    rel = mx.linalg.norm(diff.reshape(-1)) / mx.maximum(mx.linalg.norm(edited.reshape(-1)),
                                                        1e-30)
    return {"relative": float(rel.item()), "max_abs": float(mx.abs(diff).max().item())}


def ablate_weights(weights: dict[str, mx.array], config: dict[str, Any], unit: mx.array,
                   num_layers: int) -> dict[str, Optional[dict[str, float]]]:
    """Project the unit vector `unit` out of every residual write, in place: embeddings
    (rows: E - (E u) u^T), output projections (W - u (u^T W), every expert), their biases
    (b - (b.u) u). Returns {module path: requantisation error or None (not quantized)}."""
    u = unit.astype(mx.float32)

    def rows(e: mx.array) -> mx.array:  # (V, D): each row is a vector in the stream
        return e - (e @ u)[:, None] * u[None, :]

    def cols(w: mx.array) -> mx.array:  # (..., D, I): output dimension second to last
        return w - u[:, None] * mx.einsum("d,...di->...i", u, w)[..., None, :]

    report: dict[str, Optional[dict[str, float]]] = {}
    for p in embedding_prefixes(weights):
        report[p] = _edit_matrix(weights, p, config, rows)
    for p in writer_prefixes(weights, num_layers):
        report[p] = _edit_matrix(weights, p, config, cols)
        if (b := weights.get(f"{p}.bias")) is not None:
            bf = b.astype(mx.float32)
            weights[f"{p}.bias"] = (bf - (bf @ u)[..., None] * u).astype(b.dtype)
    mx.eval(weights)
    return report
