"""One writer per result folder, and no temp file outliving the run that made it.

`folder_lock` holds an exclusive `flock` on `<folder>/.mlux.lock` (the kernel drops it when the
holder dies, even under `kill -9`) and writes who holds it: pid, host, the process's start time
and the command. A second run gets an error naming the holder. A lock file left by a dead
process (on this host: pid gone, or reused by a process that started later) is taken over with
a note; one left by a process on another host is not, since its liveness cannot be checked.
`remove_orphans` deletes the temp files and directories of atomic writes a killed run left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

__all__ = ["LOCK_NAME", "FolderLockedError", "folder_lock", "remove_orphans"]

LOCK_NAME = ".mlux.lock"
_ORPHAN = re.compile(r"^\..+\.[0-9a-f]{12}\.(tmp|old)$")  # mlux.atomic's temp names


class FolderLockedError(OSError):
    """Another run holds the folder (an OSError, like any other busy resource)."""


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of `pid` (Linux: clock ticks since boot), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start  # a later start: the pid was reused


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(
        started, (int, float)) else "?"
    return (f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('hostname', '?')}, started {when}: {holder.get('command', '?')})")


def _read(fd: int) -> Optional[dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    if not raw.strip():
        return None
    try:
        found = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"pid": "?", "hostname": "?"}
    return found if isinstance(found, dict) else {"pid": "?", "hostname": "?"}


@contextlib.contextmanager
def folder_lock(folder: Path, purpose: str, *, echo: Callable[[str], None] = print
                ) -> Iterator[Path]:
    """Hold `folder` for one run of `purpose` (e.g. `collect`); raises FolderLockedError naming
    the holder when another live run has it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or {}
            os.close(fd)
            raise FolderLockedError(f"{folder} is in use by {_describe(holder)}; wait for it "
                                    f"to finish, or stop it") from None
        try:  # the holder before us may have removed the file between our open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        old = _read(fd)
        if old is not None:
            here = old.get("hostname") == socket.gethostname()
            pid = old.get("pid")
            if not here or (isinstance(pid, int) and pid != os.getpid()
                            and _alive(pid, old.get("process_start"))):
                raise FolderLockedError(
                    f"{folder} is marked in use by {_describe(old)}"
                    + ("" if here else ", on another host whose processes cannot be checked")
                    + f"; if that run is no longer running, delete {path}")
            echo(f"note: taking over the lock of {folder} from a run that is gone: "
                 f"{_describe(old)}")
        me = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": time.time(),
              "process_start": _process_start(os.getpid()), "purpose": purpose,
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)  # removed while still held: no window for a stale file
    finally:
        os.close(fd)


def remove_orphans(folder: Path, recurse_into: tuple[str, ...] = (), *,
                   targets: Optional[tuple[str, ...]] = None) -> list[Path]:
    """Delete temp files/directories of interrupted atomic writes in `folder` and anywhere under
    its subfolders `recurse_into`. `targets` names the files mlux writes in `folder` itself:
    only their temp files are removed there (a user's `.notes.0123456789ab.tmp` stays); None
    means any. Call it only while holding `folder_lock`: a live writer's temp files look the
    same (hence no blind recursion into folders another lock guards)."""
    found = [p for p in folder.glob(".*") if _ORPHAN.match(p.name) and (
        targets is None or p.name[1:].rsplit(".", 2)[0] in targets)]
    for sub in recurse_into:
        found += [p for p in (folder / sub).rglob(".*") if _ORPHAN.match(p.name)]
    for p in found:
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return found
