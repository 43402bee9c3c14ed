"""Parts: what one input file contributed to the store, written once under its content hash.

    store/parts/<sha256>/<table>.arrow, patient_refs.arrow, record_quarantine.arrow, part.json

A part is internal staging, read back only by consolidation: its tables are Arrow IPC files
(uncompressed; fast to write and to read, unlike many small Parquet files), one per table that
has rows. Parts an older medmeta wrote hold ``<table>.parquet`` instead and are read as they are.
A part is built in a temp folder and renamed into place, so it exists whole or not at all;
its presence is what makes the same content ``unchanged`` on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medmeta import schema

PART_FILE = "part.json"


def part_dir(parts_root: Path, sha256: str) -> Path:
    return parts_root / sha256


def part_exists(parts_root: Path, sha256: str) -> bool:
    return (part_dir(parts_root, sha256) / PART_FILE).exists()


def write_parquet(table: pa.Table, path: Path, compression: str = "zstd") -> None:
    """Deterministic bytes for the same table: no pandas metadata, fixed options."""
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression=compression, use_dictionary=True, write_statistics=False)


def write_arrow(table: pa.Table, path: Path) -> None:
    """A staging table as an Arrow IPC file (no schema metadata)."""
    table = table.replace_schema_metadata(None)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def write_part(parts_root: Path, sha256: str, tables: dict[str, pa.Table], meta: dict) -> None:
    parts_root.mkdir(parents=True, exist_ok=True)
    target = part_dir(parts_root, sha256)
    if (target / PART_FILE).exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=parts_root))
    try:
        for name, table in sorted(tables.items()):
            if table.num_rows:
                write_arrow(table, tmp / f"{name}.arrow")
        (tmp / PART_FILE).write_text(json.dumps(meta, sort_keys=True, indent=1))
        if target.exists():  # a half part from a killed run (no part.json): replace it
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        if (target / PART_FILE).exists():  # another worker wrote the same content first
            return
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_part_table(parts_root: Path, sha256: str, name: str) -> pa.Table | None:
    folder = part_dir(parts_root, sha256)
    path = folder / f"{name}.arrow"
    if path.exists():
        return pa.ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()
    path = folder / f"{name}.parquet"  # a part an older medmeta wrote
    return pq.read_table(path) if path.exists() else None


def record_quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.RECORD_QUARANTINE)


def read_part_meta(parts_root: Path, sha256: str) -> dict:
    return json.loads((part_dir(parts_root, sha256) / PART_FILE).read_text())
