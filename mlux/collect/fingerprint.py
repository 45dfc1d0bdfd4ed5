"""What makes two collection runs' shards interchangeable, and how to say what differs.

`run_settings`: the config values that shape the shards (not batch size or progress display),
with hook points and positions as sets (order does not change a shard). `model_fingerprint`: the
model's `config.json` hash, its quantization and a weights digest cheap enough for 70B
checkpoints: per weights file its size, a hash of its safetensors header and a hash of a strided
sample of its bytes (64 blocks of 4 KiB), so a run resumed on other weights at the same path is
refused even when the name and the config agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlux.builtin import builtin_model_path

from .run_config import CollectConfig

__all__ = ["diff_model", "diff_settings", "model_fingerprint", "run_settings"]

_SAMPLES, _BLOCK = 64, 4096


def _sha(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data, sort_keys=True,
                                                          default=str).encode()
    return hashlib.sha256(raw).hexdigest()


def run_settings(config: CollectConfig, hooks: list[str], prompts: dict[str, list[str]]
                 ) -> dict[str, Any]:
    inf, out = config.inference, config.output
    return {
        "model": config.model.name, "dtype": config.model.dtype,
        "hook_points": sorted(hooks),
        "positions": sorted(inf.positions) if inf.save_activations else [],
        "chat_template": inf.chat_template, "max_new_tokens": inf.max_new_tokens,
        "shard_size": out.shard_size, "activation_dtype": out.activation_dtype,
        "prompts": {c: {"count": len(p), "sha256": _sha(p)} for c, p in sorted(prompts.items())},
    }


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One phrase per setting that differs, e.g. `hook points: residuals_2 no longer asked for`."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "hook_points" and isinstance(a, list) and isinstance(b, list):
            gone, added = [h for h in a if h not in b], [h for h in b if h not in a]
            out.append("hook points: " + "; ".join(
                part for part in (f"{', '.join(gone)} collected before, not asked for now"
                                  if gone else "", f"{', '.join(added)} newly asked for"
                                  if added else "") if part))
        elif key == "prompts" and isinstance(a, dict) and isinstance(b, dict):
            for c in sorted(set(a) | set(b)):
                if c not in a or c not in b:
                    out.append(f"category {c!r} {'added' if c not in a else 'removed'}")
                elif a[c] != b[c]:
                    out.append(f"prompts of category {c!r} changed ({a[c]['count']} before, "
                               f"{b[c]['count']} now)")
        else:
            out.append(f"{key}: {a!r} before, {b!r} now")
    return out


def locate_model_dir(name: str) -> Optional[Path]:
    """The local directory of `name` (built-in, a path, or a hub snapshot already downloaded)."""
    builtin = builtin_model_path(name)
    if builtin is not None:
        return builtin
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a hub id, not downloaded, or no hub client: digest the params
        return None


def _file_digest(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little") if size >= 8 else 0
        header = fh.read(min(n, size - 8)) if n else b""
        start = 8 + len(header)
        span = max(size - start - _BLOCK, 0)
        sample = hashlib.sha256()
        for k in range(_SAMPLES):
            fh.seek(start + span * k // max(_SAMPLES - 1, 1))
            sample.update(fh.read(_BLOCK))
    return {"bytes": size, "header_sha256": _sha(header), "sample_sha256": sample.hexdigest()}


def _params_digest(model: Any) -> str:
    """Fallback without files: shapes, dtypes and a strided sample of every parameter."""
    h = hashlib.sha256()
    for name, v in tree_flatten(model.parameters()):
        flat = v.reshape(-1)
        sample = flat[:: max(1, flat.size // _SAMPLES)]
        values = np.asarray(sample if sample.dtype.size == 4 else sample.astype(mx.float32))
        h.update(f"{name}{v.shape}{v.dtype}".encode() + values.tobytes())
    return h.hexdigest()


def model_fingerprint(name: str, hooked: Any) -> dict[str, Any]:
    folder = locate_model_dir(name)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    config = folder / "config.json" if folder is not None else None
    if config is not None and config.is_file():
        config_sha = _sha(json.loads(config.read_text(encoding="utf-8")))
    else:
        config_sha = _sha(vars(getattr(hooked.model, "args", None) or {}))
    if files:
        weights = {"method": "files", "files": {f.name: _file_digest(f) for f in files}}
    else:
        weights = {"method": "parameters", "digest": _params_digest(hooked.model)}
    return {"config_sha256": config_sha, "quantization": hooked.quantization,
            "weights": weights}


def diff_model(old: Optional[dict[str, Any]], new: dict[str, Any]) -> list[str]:
    """What differs between two model fingerprints, in words (empty when they agree)."""
    if old is None:
        return ["the old collection has no model fingerprint"]
    out = []
    if old.get("config_sha256") != new.get("config_sha256"):
        out.append("the model's config.json differs")
    if old.get("quantization") != new.get("quantization"):
        out.append(f"quantization: {old.get('quantization')} before, "
                   f"{new.get('quantization')} now")
    a, b = old.get("weights", {}), new.get("weights", {})
    if a.get("method") != b.get("method"):
        out.append(f"the weights were identified by {a.get('method')} before and by "
                   f"{b.get('method')} now")
    elif a.get("method") == "parameters":
        if a.get("digest") != b.get("digest"):
            out.append("the weights differ")
    else:
        fa, fb = a.get("files", {}), b.get("files", {})
        for f in sorted(set(fa) | set(fb)):
            if f not in fa or f not in fb:
                out.append(f"weights file {f} {'added' if f not in fa else 'removed'}")
            elif fa[f]["bytes"] != fb[f]["bytes"]:
                out.append(f"weights file {f}: {fa[f]['bytes']} bytes before, "
                           f"{fb[f]['bytes']} now")
            elif fa[f] != fb[f]:
                part = "header" if fa[f]["header_sha256"] != fb[f]["header_sha256"] else "bytes"
                out.append(f"weights file {f}: same size, different {part}")
    return out
