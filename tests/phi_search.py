"""Search every byte a run leaves outside the PHI zone for planted markers.

The PHI zone of a home is its quarantine folder (whole source files, mode 0700). Everything else
under the home, the Prefect database with its WAL and SHM, and captured terminal output and log
records must hold none of the needles. Parquet and Arrow files are searched as bytes and as their
decoded values (they are compressed).
"""

from __future__ import annotations

import json
from pathlib import Path


def readable(path: Path) -> bytes:
    """The file's bytes, and for Parquet / Arrow IPC (compressed) every value it holds, as text."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
    elif path.suffix in (".arrow", ".feather", ".ipc"):
        import pyarrow.feather as feather

        data += json.dumps(feather.read_table(path).to_pylist(), default=str).encode()
    return data


def leaks(needles: list[str | bytes], home: Path | None = None, prefect_db: Path | None = None,
          texts: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{where: [needles found]} over the home (quarantine aside), the Prefect database files and
    named texts (stdout, stderr, caplog.text ...); empty when nothing leaked."""
    wanted = [n if isinstance(n, bytes) else n.encode() for n in needles]
    found: dict[str, list[str]] = {}

    def search(where: str, data: bytes) -> None:
        if hits := [n.decode(errors="replace") for n in wanted if n in data]:
            found[where] = hits

    if home is not None:
        for path in sorted(Path(home).rglob("*")):
            if path.is_file() and "quarantine" not in path.relative_to(home).parts:
                search(str(path.relative_to(home)), readable(path))
    if prefect_db is not None:
        for db_file in prefect_db.parent.glob(prefect_db.name + "*"):  # the database, its WAL and SHM
            search(f"prefect database {db_file.name}", db_file.read_bytes())
    for name, text in (texts or {}).items():
        search(name, text.encode(errors="surrogateescape"))
    return found
