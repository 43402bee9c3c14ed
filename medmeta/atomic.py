"""Atomic writes: a temp file in the same folder, fsync, then rename over the target.

A reader (or a rerun after ``kill -9``) sees either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(target: str | os.PathLike, mode: int = 0o644, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it is renamed onto ``target``.

    ``fsync=False`` is for staging files written by the thousand: a rename is still atomic
    for other processes and after ``kill -9``; ``sync_all`` before the ledger makes them durable.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        if fsync:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    write_bytes(target, text.encode("utf-8"), mode)


def write_json(target: str | os.PathLike, obj: Any, mode: int = 0o644) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", mode)


def sync_all() -> None:
    """Flush every staged write to disk, once, before a run commits its ledger and snapshot."""
    os.sync()
