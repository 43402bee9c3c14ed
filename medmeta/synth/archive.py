"""Byte-for-byte reproducible zip files: fixed member times, modes and order."""

from __future__ import annotations

import zipfile
from pathlib import Path

ZIP_TIME = (2025, 12, 31, 18, 0, 0)
CHUNK = 1024 * 1024


def member(name: str, compress: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    """A zip entry header with a fixed time and permissions."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip holding ``members`` (name as stored -> bytes), in name order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(members):
            archive.writestr(member(name), members[name])


def write_zero_zip(path: Path, name: str, size: int) -> None:
    """A zip with one deflated entry of ``size`` zero bytes, written a chunk at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    zeros = bytes(CHUNK)
    with zipfile.ZipFile(path, "w") as archive, archive.open(member(name), "w") as entry:
        for _ in range(size // CHUNK):
            entry.write(zeros)
        entry.write(bytes(size % CHUNK))
