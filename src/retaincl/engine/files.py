"""Atomic file writes: write to a temporary file in the same folder, then rename.

A temporary file is named ``.<target>.<host>.<pid>.<random>.tmp``. A process killed
mid-write (``kill -9``, power loss) leaves it behind; :func:`remove_stale_temp_files`
removes it on the next run, and only when it is surely abandoned: written on this
machine by a process that no longer exists, or older than a day (another machine
sharing the folder, or the older ``.<target>.<random>.tmp`` naming).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STALE_AFTER_SECONDS = 86400.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def temp_prefix(name: str) -> str:
    """The start of a temporary file's name for target ``name`` written by this process."""
    return f".{name}.{_host()}.{os.getpid()}."


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _abandoned(p: Path, host: str, now: float) -> bool:
    parts = p.name[1:].rsplit(".", 4)  # <target>.<host>.<pid>.<random>.tmp (the target may hold dots)
    if len(parts) == 5 and parts[2].isdigit() and parts[1] == host:
        return not _pid_alive(int(parts[2]))
    try:
        return now - p.stat().st_mtime > STALE_AFTER_SECONDS
    except OSError:
        return False


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the abandoned temporary files of interrupted atomic writes in ``folder``
    (not recursive); returns what was removed. Never fails: cleaning is a courtesy."""
    folder = Path(folder)
    removed: list[Path] = []
    host, now = _host(), time.time()
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for p in candidates:
        try:
            if p.is_file() and _abandoned(p, host, now):
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
