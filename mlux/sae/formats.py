"""SAE files: SAELens folders (`cfg.json` + `sae_weights.safetensors`) both ways, and Gemma
Scope's `params.npz` read. Every problem is one ValueError naming the file and the field.

Also reads the folders older mlux versions wrote (`sae.safetensors`, config in its metadata).
Reads both SAELens layouts: v6 (`metadata: {model_name, hook_name, ...}`, `k` and TopK's
`rescale_acts_by_decoder_norm` at the top) and the
older flat one (`hook_name` at the top, TopK as `activation_fn: "topk"` with
`activation_fn_kwargs: {"k": ...}`). A `norm_scaling_factor` in cfg.json is applied to the
inputs of an `expected_average_only_in` SAE; a per-feature `scaling_factor` weight that is not
all ones scales the features before decoding (SAELens's finetuning scaling factor).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from mlux.atomic import PathLike, atomic_write_bytes, atomic_write_json

from .config import ARCHITECTURES, SAEConfig, to_saelens_hook

__all__ = ["CFG_NAME", "EXTRA_NAME", "GEMMA_SCOPE_NAME", "WEIGHTS_NAME", "read_sae",
           "write_sae"]

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
GEMMA_SCOPE_NAME = "params.npz"
LEGACY_WEIGHTS_NAME = "sae.safetensors"  # older mlux SAEs: config in the file's metadata
EXTRA_NAME = "mlux.json"  # mlux's own record next to a SAELens folder (metrics, settings)
_LAYOUT_VERSION = "6.0.0"  # the cfg.json layout written (SAELens reads it as its own v6)
_MLUX_KEY = "mlux"  # cfg.json entry for mlux's fields; SAELens ignores unknown top-level keys


def _shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    return {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in),
            "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_in,), "threshold": (cfg.d_sae,),
            "scaling_factor": (cfg.d_sae,)}


def _check_weights(where: str, cfg: SAEConfig, weights: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
    required = ["W_enc", "W_dec", "b_enc", "b_dec"]
    if cfg.architecture == "jumprelu":
        required.append("threshold")
    missing = [k for k in required if k not in weights]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r} (architecture "
                         f"{cfg.architecture!r} needs {', '.join(required)})")
    out = {}
    for key, shape in _shapes(cfg).items():
        if key not in weights:
            continue
        w = np.asarray(weights[key], dtype=np.float32)
        if key == "threshold" and w.ndim == 0:  # one threshold for every feature
            w = np.full(shape, float(w), np.float32)
        if key == "scaling_factor" and np.allclose(w, 1.0):
            continue  # SAELens drops an all-ones factor too
        if w.shape != shape:
            raise ValueError(f"{where}: {key} has shape {tuple(w.shape)}; d_in {cfg.d_in} and "
                             f"d_sae {cfg.d_sae} make it {shape}")
        if not np.isfinite(w).all():
            raise ValueError(f"{where}: {key} contains NaN or inf values")
        out[key] = w
    return out


def _field(where: str, cfg: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    meta = next((cfg[k] for k in ("metadata", "meta") if isinstance(cfg.get(k), dict)), {})
    value = cfg.get(key, meta.get(key, default))
    if value is ...:
        raise ValueError(f"{where}: missing field {key!r}")
    if value is not None and value is not default and (
            not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _saelens_config(where: str, raw: Any, hook_name: Optional[str]) -> SAEConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must hold a JSON object")
    arch = _field(where, raw, "architecture", str, "standard")
    act = raw.get("activation_fn", raw.get("activation_fn_str"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if arch == "standard" and act == "topk":  # the older layout's TopK
        arch = "topk"
    if arch not in ARCHITECTURES:
        raise ValueError(f"{where}: architecture {arch!r} is not supported; valid: "
                         f"{', '.join(ARCHITECTURES)}")
    k = raw.get("k", kwargs.get("k", 32) if isinstance(kwargs, dict) else 32)
    if arch in ("topk", "batchtopk") and (isinstance(k, bool) or not isinstance(k, (int, float))
                                          or k < 1 or k != int(k)):
        raise ValueError(f"{where}: field 'k' must be an int >= 1, got {k!r}")
    mine = raw.get(_MLUX_KEY) if isinstance(raw.get(_MLUX_KEY), dict) else {}
    norm = _field(where, raw, "normalize_activations", str, "none") or "none"
    try:
        return SAEConfig(
            d_in=_field(where, raw, "d_in", int), d_sae=_field(where, raw, "d_sae", int),
            architecture=arch, k=int(k),
            apply_b_dec_to_input=_field(where, raw, "apply_b_dec_to_input", bool, True),
            rescale_acts_by_decoder_norm=_field(where, raw, "rescale_acts_by_decoder_norm",
                                                bool, False),
            normalize_activations=norm,
            norm_scaling_factor=float(raw.get("norm_scaling_factor") or 1.0),
            hook_name=hook_name or _field(where, raw, "hook_name", str, None),
            model_name=_field(where, raw, "model_name", str, None),
            neuronpedia_id=_field(where, raw, "neuronpedia_id", str, None),
            position=mine.get("position", "all"),
            activation_norm=mine.get("activation_norm"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _read_saelens(folder: Path, hook_name: Optional[str]) -> tuple[SAEConfig, dict]:
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"no SAE at {folder}: {p.name} is missing (a SAELens "
                                    f"folder holds {CFG_NAME} and {WEIGHTS_NAME}; Gemma Scope "
                                    f"ships {GEMMA_SCOPE_NAME})")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    cfg = _saelens_config(str(cfg_path), raw, hook_name)
    try:
        arrays = mx.load(str(weights_path))
    except Exception as e:  # MLX raises RuntimeError/ValueError for a damaged file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    weights = {k: np.asarray(v.astype(mx.float32)) for k, v in arrays.items()}
    if "topk_threshold" in weights and "threshold" not in weights:  # a BatchTopK checkpoint
        weights["threshold"] = weights.pop("topk_threshold")
    return cfg, _check_weights(str(weights_path), cfg, weights)


def _gemma_scope_hook(path: Path) -> Optional[str]:
    """Gemma Scope paths name the layer (`layer_12/...`) and the site (`...-res`, `...-mlp`)."""
    m = re.search(r"layer_(\d+)", str(path))
    if m is None:
        return None
    site = "hook_mlp_out" if "mlp" in str(path) else "hook_resid_post"
    return f"blocks.{m.group(1)}.{site}"


def _read_gemma_scope(path: Path, hook_name: Optional[str]) -> tuple[SAEConfig, dict]:
    try:
        with np.load(path) as data:
            weights = {("W_" + k[2:] if k.startswith("w_") else k): data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    if "W_enc" not in weights or np.ndim(weights["W_enc"]) != 2:
        raise ValueError(f"{path}: missing key 'W_enc' (a (d_in, d_sae) matrix; Gemma Scope "
                         "files hold W_enc, W_dec, b_enc, b_dec, threshold)")
    d_in, d_sae = (int(n) for n in np.shape(weights["W_enc"]))
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu",
                    apply_b_dec_to_input=False, position="all",
                    hook_name=hook_name or _gemma_scope_hook(path))
    return cfg, _check_weights(str(path), cfg, weights)


def _read_legacy(folder: Path) -> tuple[SAEConfig, dict]:
    """An SAE saved by mlux before SAELens folders (`sae.safetensors` whose metadata holds the
    config): TopK or ReLU on inputs scaled by `input_scale`."""
    path = folder / LEGACY_WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = json.loads((f.metadata() or {})["mlux_sae_config"])
            weights = {k: f.get_tensor(k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        d, scale = int(raw["d_model"]), float(raw["input_scale"])
        cfg = SAEConfig(d_in=d, d_sae=int(raw["num_latents"]),
                        architecture="topk" if raw["kind"] == "topk" else "standard",
                        k=int(raw["k"]), normalize_activations="expected_average_only_in",
                        norm_scaling_factor=scale,
                        hook_name=to_saelens_hook(raw["hook"]) if raw.get("hook") else None,
                        model_name=raw.get("model_id"), position=raw.get("position", "last"),
                        activation_norm=d**0.5 / scale)
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not an mlux SAE ({e})") from None
    return cfg, _check_weights(str(path), cfg, weights)


def read_sae(path: PathLike, *, hook_name: Optional[str] = None
             ) -> tuple[SAEConfig, dict[str, np.ndarray]]:
    """(config, float32 weights by SAELens key) of a SAELens folder, a Gemma Scope npz, or a
    folder saved by an older mlux (`sae.safetensors`)."""
    p = Path(path)
    if p.is_dir() and (p / LEGACY_WEIGHTS_NAME).is_file() and not (p / CFG_NAME).is_file():
        return _read_legacy(p)
    if p.is_dir() and (p / GEMMA_SCOPE_NAME).is_file() and not (p / CFG_NAME).is_file():
        p = p / GEMMA_SCOPE_NAME
    if p.is_file() and p.suffix == ".npz":
        return _read_gemma_scope(p, hook_name)
    if p.is_file():
        raise ValueError(f"{p}: give a SAELens folder ({CFG_NAME} + {WEIGHTS_NAME}) or a "
                         f"Gemma Scope {GEMMA_SCOPE_NAME}")
    return _read_saelens(p, hook_name)


def _cfg_json(cfg: SAEConfig) -> dict[str, Any]:
    """cfg.json in SAELens's v6 layout (architecture-specific `k` at the top level)."""
    arch = cfg.architecture
    out: dict[str, Any] = {"architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
                           "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
                           "normalize_activations": cfg.normalize_activations,
                           "reshape_activations": "none",
                           "metadata": {"model_name": cfg.model_name, "hook_name": cfg.hook_name,
                                        "neuronpedia_id": cfg.neuronpedia_id,
                                        "sae_lens_version": _LAYOUT_VERSION,
                                        "sae_lens_training_version": _LAYOUT_VERSION}}
    if arch in ("topk", "batchtopk"):
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out[_MLUX_KEY] = {"position": cfg.position, "activation_norm": cfg.activation_norm}
    return out


def write_sae(path: PathLike, cfg: SAEConfig, weights: dict[str, np.ndarray], *,
              extra: Optional[dict[str, Any]] = None) -> Path:
    """Write cfg.json and sae_weights.safetensors (each atomically) into folder `path`; a
    BatchTopK SAE with a threshold is written as the JumpReLU it is at inference (as SAELens
    saves them)."""
    if cfg.architecture == "batchtopk" and "threshold" in weights:
        cfg = replace(cfg, architecture="jumprelu")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    atomic_write_bytes(out / WEIGHTS_NAME, safetensors_bytes(arrays))
    atomic_write_json(out / CFG_NAME, _cfg_json(cfg))
    if extra is not None:
        atomic_write_json(out / EXTRA_NAME, extra)
    return out
