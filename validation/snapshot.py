"""Validate the current snapshot of a home: results, row quarantine and kept tables on disk.

Layout in ``validation.gate``. Rows are never deleted: for every table, rows before = rows kept
+ rows quarantined. The quarantine keeps each failing row whole (``record``, JSON) with its
source file hash and the expectations it failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medmeta import schema
from medmeta.atomic import atomic_path
from medmeta.home import Home
from medmeta.ingest.parts import write_parquet
from validation.coverage import label_coverage
from validation.gate import current_snapshot, record_result, validation_dir
from validation.rules import load_rules
from validation.run import validate_tables


def load_tables(home: Home) -> dict[str, pd.DataFrame]:
    """The snapshot's tables; one that was never written is left out (validated as empty)."""
    return {name: pd.read_parquet(home.table(name)) for name in schema.TABLES if home.table(name).exists()}


def validate_snapshot(home: Home, rules_path: str | Path | None = None) -> dict:
    rules = load_rules(rules_path)  # a bad rules file fails here, before anything is validated
    snapshot = current_snapshot(home)
    tables = load_tables(home)
    folder = validation_dir(home, snapshot)
    report = validate_tables(tables, rules, docs_dir=folder / "data_docs")
    kept, quarantined = report.quarantine(tables)
    quarantined["record"] = [
        json.dumps(tables[t].loc[row].to_dict(), default=str, sort_keys=True)
        for t, row in zip(quarantined["table"], quarantined["row"])
    ]
    for name, frame in kept.items():
        _write(folder / "tables" / f"{name}.parquet", frame)
    _write(folder / "quarantine.parquet", quarantined.astype({"row": str}))
    details = report.to_dict()
    result = {
        "snapshot": snapshot,
        "success": report.success,
        "critical_failures": details["critical_failures"],
        "warnings": details["warnings"],
        "rows_checked": report.rows_checked,
        "rows_quarantined": len(quarantined),
        "row_counts": details["row_counts"],
        "empty_tables": details["empty_tables"],  # no rows; a failure only when ``require`` names them
        "require": details["require"],
        "rules": details["results"],
        "label_coverage": label_coverage(kept, rules),
        "data_docs": str(folder / "data_docs" / "index.html"),
    }
    record_result(home, result)
    return result


def _write(path: Path, frame: pd.DataFrame) -> None:
    import pyarrow as pa

    with atomic_path(path) as tmp:
        write_parquet(pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False), tmp)
