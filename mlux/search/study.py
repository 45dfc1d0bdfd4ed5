"""Where a search lives: an optuna study in the output folder (journal file), so Ctrl-C and a
rerun continue it, next to `settings.json`, which identifies the study: a rerun with other
settings is refused naming what changed (the collection's own comparison,
`mlux.collect.fingerprint`)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx
import numpy as np
import optuna

from ..atomic import atomic_write_json
from ..collect.fingerprint import diff_model, diff_settings, model_fingerprint
from ..collect.lock import LOCK_NAME

__all__ = ["JOURNAL", "SETTINGS", "digest", "open_study", "prompt_digest"]

JOURNAL, SETTINGS = "study.journal", "settings.json"
_OURS = {JOURNAL, SETTINGS, "search.json", "search.png", f"{JOURNAL}.lock", "picked.safetensors",
         LOCK_NAME}


def digest(directions: dict[int, mx.array]) -> str:
    """A hash of a vector's directions (the study's identity includes what it steers with)."""
    h = hashlib.sha256()
    for i, v in sorted(directions.items()):
        h.update(str(i).encode() + np.asarray(v.astype(mx.float32)).tobytes())
    return h.hexdigest()


def prompt_digest(prompts: Sequence[Any]) -> dict[str, Any]:
    """Count and hash of a prompt set, in the shape `diff_settings` names changes of."""
    raw = json.dumps([p if isinstance(p, str) else list(p) for p in prompts]).encode()
    return {"count": len(prompts), "sha256": hashlib.sha256(raw).hexdigest()}


def _check_folder(out: Path, settings: dict[str, Any], model: dict[str, Any]) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"search output {out} is a file, not a folder")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    if not out.is_dir():
        return
    path = out / SETTINGS
    if not path.is_file():
        if (out / JOURNAL).exists():
            raise ValueError(f"{out} holds a study journal without its {SETTINGS}, so what it "
                             "searched is unknown; choose another output folder or pass --fresh")
        strangers = sorted(p.name for p in out.iterdir() if p.name not in _OURS)
        if strangers:
            raise ValueError(f"{out} holds files that are not a search ({', '.join(strangers[:3])}"
                             f"{'...' if len(strangers) > 3 else ''}); choose another output "
                             "folder")
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not readable ({e}); pass --fresh to start over") from e
    changed = diff_settings(old.get("settings", {}), json.loads(json.dumps(settings)))
    changed += diff_model(old.get("model_fingerprint"), model)
    if changed:
        raise ValueError(f"{out} holds another study ({'; '.join(changed)}); rerun with the "
                         "same settings to continue it, choose another output folder or pass "
                         "--fresh")


def open_study(out: Optional[Path], settings: dict[str, Any], hooked: Any,
               directions: list[str], seed: Optional[int], fresh: bool = False) -> optuna.Study:
    """The study of `settings` (in memory when `out` is None), created or resumed. `fresh`
    drops a previous study in `out` first."""
    optuna.logging.set_verbosity(logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    if out is None:
        return optuna.create_study(directions=directions, sampler=sampler)
    if fresh and out.is_dir():
        for name in _OURS:
            (out / name).unlink(missing_ok=True)
    model = model_fingerprint(str(hooked.model_id), hooked)
    _check_folder(out, settings, model)
    out.mkdir(exist_ok=True)
    if not (out / SETTINGS).is_file():
        atomic_write_json(out / SETTINGS, {"settings": settings, "model_fingerprint": model})
    backend = optuna.storages.journal.JournalFileBackend(str(out / JOURNAL))
    storage = optuna.storages.JournalStorage(backend)
    study = optuna.create_study(study_name="mlux-search", storage=storage,
                                directions=directions, sampler=sampler, load_if_exists=True)
    if study.trials and seed is not None:
        # A resumed sampler seeded as before would draw the first run's startup trials again.
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study
