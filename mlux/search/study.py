"""Where a search lives: an optuna study in the output folder (journal file), so Ctrl-C and a
rerun continue it, next to `settings.json`, which identifies the study: a rerun with other
settings is refused naming what changed (the collection's own comparison,
`mlux.collect.fingerprint`), and a second run while one holds the folder is refused naming it
(the collection's `folder_lock`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import mlx.core as mx
import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from ..atomic import atomic_write_json
from ..collect.fingerprint import diff_model, diff_settings, model_fingerprint
from ..collect.lock import LOCK_NAME, folder_lock

__all__ = ["JOURNAL", "SETTINGS", "digest", "open_study", "prompt_digest"]

JOURNAL, SETTINGS = "study.journal", "settings.json"
_OURS = {JOURNAL, SETTINGS, "search.json", "search.png", "picked.safetensors", LOCK_NAME}


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


class _HeldByFolderLock(JournalFileOpenLock):
    """The journal's lock, given up for the folder's: `folder_lock`, held around every use of
    the study, already makes this process its only writer, and optuna's file locks are not
    Ctrl-C safe (an interrupt inside their release surfaces as FileNotFoundError or
    RuntimeError instead of KeyboardInterrupt)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


def _check_folder(out: Path, settings: dict[str, Any], model: dict[str, Any]) -> None:
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


@contextlib.contextmanager
def open_study(out: Optional[Path], settings: dict[str, Any], hooked: Any,
               directions: list[str], seed: Optional[int], fresh: bool = False
               ) -> Iterator[optuna.Study]:
    """The study of `settings` (in memory when `out` is None), created or resumed, while this
    process holds `out` (`folder_lock`: a second run is told who holds it). `fresh` drops a
    previous study in `out` first."""
    optuna.logging.set_verbosity(logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    if out is None:
        yield optuna.create_study(directions=directions, sampler=sampler)
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"search output {out} is a file, not a folder")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    model = model_fingerprint(str(hooked.model_id), hooked)
    with folder_lock(out, "search", echo=_note):
        if fresh:
            for name in _OURS - {LOCK_NAME}:
                (out / name).unlink(missing_ok=True)
        _check_folder(out, settings, model)
        if not (out / SETTINGS).is_file():
            atomic_write_json(out / SETTINGS, {"settings": settings, "model_fingerprint": model})
        journal = str(out / JOURNAL)
        backend = JournalFileBackend(journal, lock_obj=_HeldByFolderLock(journal))
        study = optuna.create_study(study_name="mlux-search", storage=JournalStorage(backend),
                                    directions=directions, sampler=sampler, load_if_exists=True)
        if study.trials and seed is not None:
            # A resumed sampler seeded as before would draw the first run's startup trials again.
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        yield study


def _note(text: str) -> None:
    print(text, file=sys.stderr)
