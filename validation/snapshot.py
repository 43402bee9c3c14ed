"""Validate the current snapshot of a home: results, row quarantine and kept tables on disk.

Layout in ``validation.gate``. Rows are never deleted: for every table, rows before = rows kept
+ rows quarantined. The quarantine keeps each failing row (``record``, JSON) with its source file
hash and the expectations it failed; the values that failed a rule are in it as ``masked`` text
(medmeta/records/masking.py), as in the result's samples, for a text column that fails its rule
may hold a name. The row itself stays in the store, where ``table`` and ``row`` find it.

A snapshot that fails a critical rule gets no kept tables (no stage reads a failed snapshot, and
the rows a critical rule flagged would sit in them); its quarantine and result are written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from medmeta import schema
from medmeta.atomic import atomic_path
from medmeta.home import Home
from medmeta.ingest.images_table import images_present, read_images
from medmeta.ingest.parts import write_parquet
from medmeta.pseudonyms import Pseudonymizer, load_key
from medmeta.records.masking import masked
from validation.coverage import label_coverage
from validation.gate import current_snapshot, record_result, validation_dir
from validation.rules import load_rules
from validation.run import ValidationReport, validate_tables


def load_tables(home: Home) -> dict[str, pd.DataFrame]:
    """The snapshot's tables; one that was never written is left out (validated as empty). The images
    table is read with ``read_images`` (kept as parts: ``medmeta.ingest.images_table``)."""
    tables = {}
    for name in schema.TABLES:
        if name == "images":
            if images_present(home):
                tables[name] = read_images(home).to_pandas()
        elif home.table(name).exists():
            tables[name] = pd.read_parquet(home.table(name))
    return tables


def validate_snapshot(home: Home, rules_path: str | Path | None = None) -> dict:
    rules = load_rules(rules_path)  # a bad rules file fails here, before anything is validated
    snapshot = current_snapshot(home)
    pseudonymizer = Pseudonymizer(load_key(home.key_file))  # keys the masks of failing values
    tables = load_tables(home)
    folder = validation_dir(home, snapshot)
    report = validate_tables(tables, rules, docs_dir=folder / "data_docs", pseudonymizer=pseudonymizer)
    kept, quarantined = report.quarantine(tables)
    quarantined["record"] = [
        json.dumps(masked_record(tables[t].loc[row].to_dict(), columns.split("; "), pseudonymizer),
                   default=str, sort_keys=True)
        for t, row, columns in zip(quarantined["table"], quarantined["row"], quarantined["columns"])
    ]
    if report.success:
        for name, frame in kept.items():
            _write(folder / "tables" / f"{name}.parquet", frame)
    else:  # an earlier run's kept tables of this snapshot (with other rules) go too
        shutil.rmtree(folder / "tables", ignore_errors=True)
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
        "label_coverage": label_coverage(unflagged(kept, report), rules),
        "data_docs": str(folder / "data_docs" / "index.html"),
    }
    record_result(home, result)
    return result


def unflagged(kept: dict[str, pd.DataFrame], report: ValidationReport) -> dict[str, pd.DataFrame]:
    """The kept rows less those a failed critical rule flagged (which stay in ``kept``: critical
    rules move no rows): the rows that passed every rule."""
    flagged: dict[str, set] = {}
    for failure in report.critical_failures:
        flagged.setdefault(failure.table, set()).update(failure.rows)
    return {name: frame.drop(index=list(flagged[name])) if flagged.get(name) else frame
            for name, frame in kept.items()}


def masked_record(record: dict, failing: list[str], pseudonymizer: Pseudonymizer) -> dict:
    """A quarantined row with the text of its ``failing`` columns masked (numbers, dates and
    nulls stay: they can not carry a name)."""
    return {column: masked(value, pseudonymizer) if column in failing and isinstance(value, str) else value
            for column, value in record.items()}


def _write(path: Path, frame: pd.DataFrame) -> None:
    import pyarrow as pa

    with atomic_path(path) as tmp:
        write_parquet(pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False), tmp)
