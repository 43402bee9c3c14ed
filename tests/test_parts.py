"""Parts, the ingest staging area: one Arrow IPC file per part, whole or absent; older part folders still read."""

from __future__ import annotations

import json
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from medmeta import schema
from medmeta.ingest.parts import part_exists, part_hashes, read_part, record_quarantine_table, staged_table, write_part
from medmeta.records.canonical import PATIENT_REFS, staging_schema

SHA_NEW = "a" * 64
SHA_OLD = "b" * 64


def _conditions(n: int, source: str) -> pa.Table:
    rows = [{"patient_id": f"P{i}", "site": "s", "source": source, "system": "http://snomed.info/sct",
             "code": str(100 + i), "display": None, "onset_date": date(2020, 1, 1 + i), "record_id": f"R{i}",
             "patient_ref": None, "location": f"entry {i}"} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=staging_schema("conditions"))


def test_a_part_is_one_file_holding_its_tables_and_meta(tmp_path):
    tables = {"conditions": _conditions(3, SHA_NEW), "observations": staging_schema("observations").empty_table(),
              "record_quarantine": record_quarantine_table([{"source": SHA_NEW, "location": "entry 9", "reason": "x"}])}
    meta = {"kind": "json", "rows": {"conditions": 3, "observations": 0}, "read": {"Condition": 3}}
    write_part(tmp_path, SHA_NEW, tables, meta)

    assert [p.name for p in tmp_path.iterdir()] == [f"{SHA_NEW}.arrow"]  # no temp file, no folder left
    assert part_exists(tmp_path, SHA_NEW) and part_hashes(tmp_path) == {SHA_NEW}
    part = read_part(tmp_path, SHA_NEW)
    assert part.meta == meta
    assert sorted(part.tables) == ["conditions", "record_quarantine"]  # a table without rows is left out
    assert staged_table([part], "conditions", staging_schema("conditions")).equals(tables["conditions"])
    assert staged_table([part], "observations", staging_schema("observations")).num_rows == 0


def test_a_part_without_tables_keeps_its_meta(tmp_path):
    write_part(tmp_path, SHA_NEW, {}, {"kind": "fhir_export_log", "rows": {}})
    assert read_part(tmp_path, SHA_NEW).meta == {"kind": "fhir_export_log", "rows": {}}
    assert staged_table([read_part(tmp_path, SHA_NEW)], "patient_refs", PATIENT_REFS).num_rows == 0


def test_part_folders_an_older_medmeta_wrote_are_read_with_new_parts(tmp_path):
    folder = tmp_path / SHA_OLD  # the former layout: <sha256>/<table>.parquet and part.json
    folder.mkdir()
    old = _conditions(2, SHA_OLD)
    pq.write_table(old.cast(old.schema.set(old.schema.get_field_index("code"), pa.field("code", pa.large_string()))),
                   folder / "conditions.parquet")  # its own types: cast on reading
    (folder / "part.json").write_text(json.dumps({"kind": "csv", "rows": {"conditions": 2}}))
    write_part(tmp_path, SHA_NEW, {"conditions": _conditions(3, SHA_NEW)}, {"kind": "json"})
    (tmp_path / ".interrupted.tmp").write_bytes(b"half")  # a killed write: not a part
    (tmp_path / ("c" * 64)).mkdir()  # a half folder of the former layout, without part.json: not a part

    assert part_hashes(tmp_path) == {SHA_NEW, SHA_OLD}
    parts = [read_part(tmp_path, h) for h in sorted(part_hashes(tmp_path))]
    assert parts[1].meta["kind"] == "csv"
    table = staged_table(parts, "conditions", staging_schema("conditions"))
    assert table.schema == staging_schema("conditions")
    assert table.column("source").to_pylist() == [SHA_NEW] * 3 + [SHA_OLD] * 2
    assert table.column("code").to_pylist() == ["100", "101", "102", "100", "101"]
    assert set(schema.TABLES["conditions"].names) <= set(table.column_names)
