"""Parts: what one input file contributed to the store, written once under its content hash.

    store/parts/<sha256>.arrow

A part is internal staging, read back only by consolidation, so it is one Arrow IPC file (fast
to write and to read; no folder, no file per table): a single row whose columns are the part's
tables, each a list of structs holding that table's rows (``patients``, ``conditions``,
``observations``, ``medication_exposures``, ``patient_refs``, ``medication_refs``, ``concepts``,
``record_quarantine``; a table without rows is left out), and the part's meta (kind, rows per
table, resources read / ignored / excluded) as JSON in the schema metadata key ``medmeta.part``.
It is written to a temp file beside it and renamed into place, so it exists whole or not at all;
its presence is what makes the same content ``unchanged`` on the next run.

Parts an older medmeta wrote, ``store/parts/<sha256>/`` folders holding ``<table>.parquet`` and
``part.json``, are read as they are.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medmeta import schema

PART_SUFFIX = ".arrow"
META_KEY = b"medmeta.part"
LEGACY_PART_FILE = "part.json"


@dataclass(frozen=True)
class Part:
    """One part as read back: its meta and, per table with rows, a one-element list of its rows
    (a ``pa.ListArray`` of structs, as stored) or, for a part an older medmeta wrote, a table."""

    meta: dict
    tables: dict[str, pa.ListArray | pa.Table]


def staged_table(parts: list[Part], name: str, table_schema: pa.Schema) -> pa.Table:
    """Table ``name`` of every part, in the order of ``parts``, with ``table_schema``'s columns.

    Parts written with exactly this schema (all of them, in a store this medmeta wrote) are
    flattened in one step, not part by part; any other part is selected and cast on its own.
    """
    found = [part.tables[name] for part in parts if name in part.tables]
    if not found:
        return table_schema.empty_table()
    rows_type = pa.list_(pa.struct(list(table_schema)))
    if all(isinstance(rows, pa.Array) for rows in found):
        try:
            together = pa.chunked_array(found, rows_type)  # checks every part's type
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            pass
        else:
            return pa.Table.from_struct_array(together.combine_chunks().flatten())
    tables = [pa.Table.from_struct_array(rows.flatten()) if isinstance(rows, pa.Array) else rows for rows in found]
    return pa.concat_tables([t.select(table_schema.names).cast(table_schema) for t in tables])


def part_path(parts_root: Path, sha256: str) -> Path:
    return parts_root / f"{sha256}{PART_SUFFIX}"


def part_exists(parts_root: Path, sha256: str) -> bool:
    return part_path(parts_root, sha256).exists() or (parts_root / sha256 / LEGACY_PART_FILE).exists()


def part_hashes(parts_root: Path) -> set[str]:
    """The content hashes that have a part (either format)."""
    if not parts_root.exists():
        return set()
    found = set()
    for entry in os.scandir(parts_root):
        if entry.name.startswith("."):
            continue
        if entry.name.endswith(PART_SUFFIX):
            found.add(entry.name[:-len(PART_SUFFIX)])
        elif entry.is_dir() and os.path.exists(os.path.join(entry.path, LEGACY_PART_FILE)):
            found.add(entry.name)
    return found


def write_parquet(table: pa.Table, path: Path, compression: str = "zstd") -> None:
    """Deterministic bytes for the same table: no pandas metadata, fixed options."""
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression=compression, use_dictionary=True, write_statistics=False)


def write_part(parts_root: Path, sha256: str, tables: dict[str, pa.Table], meta: dict) -> None:
    """Stage ``tables`` and ``meta`` as the part of ``sha256``, unless it exists already."""
    target = part_path(parts_root, sha256)
    if target.exists():
        return
    data = encode_part(tables, meta)
    parts_root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sha256[:12]}.", suffix=".tmp", dir=parts_root)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.rename(tmp, target)  # no fsync here: sync_all runs once before the ledger points at parts
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def encode_part(tables: dict[str, pa.Table], meta: dict) -> bytes:
    """The bytes of a part file: one row, a list-of-struct column per table with rows."""
    names, columns = [], []
    for name, table in sorted(tables.items()):
        if table.num_rows:
            rows = table.replace_schema_metadata(None).combine_chunks().to_struct_array()
            if isinstance(rows, pa.ChunkedArray):
                rows = rows.combine_chunks()
            names.append(name)
            columns.append(pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows))
    metadata = {META_KEY: json.dumps(meta, sort_keys=True).encode()}
    one_row = pa.table(dict(zip(names, columns))) if names else pa.table({})
    one_row = one_row.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, one_row.schema) as writer:
        if names:
            writer.write_table(one_row)
    return sink.getvalue().to_pybytes()


def read_part(parts_root: Path, sha256: str) -> Part:
    """The part of ``sha256`` (either format)."""
    path = part_path(parts_root, sha256)
    if not path.exists():
        return _read_legacy_part(parts_root / sha256)
    reader = pa.ipc.open_file(pa.py_buffer(path.read_bytes()))
    meta = json.loads(reader.schema.metadata[META_KEY])
    if not reader.schema.names:
        return Part(meta, {})
    one_row = reader.read_all()
    return Part(meta, {name: one_row.column(name).chunk(0) for name in one_row.column_names})


def _read_legacy_part(folder: Path) -> Part:
    meta = json.loads((folder / LEGACY_PART_FILE).read_text())
    tables = {p.stem: pq.read_table(p) for p in sorted(folder.glob("*.parquet"))}
    return Part(meta, tables)


def rejected_rows(rows, reasons) -> "pd.DataFrame":
    """Record-quarantine rows (source, location, reason) for staged ``rows`` that consolidation rejects;
    ``reasons`` is one reason for all or one per row."""
    import numpy as np
    import pandas as pd

    reasons = [reasons] * len(rows) if isinstance(reasons, str) else list(reasons)
    return pd.DataFrame({"source": rows["source"].to_numpy(dtype=object),
                         "location": rows["location"].fillna("record").to_numpy(dtype=object),
                         "reason": np.array(reasons, dtype=object)})


def record_quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.RECORD_QUARANTINE)
