"""Validation results per snapshot, and the gate later stages pass through.

    H/validation/<snapshot>/result.json           success, critical failures, warnings, counts
    H/validation/<snapshot>/quarantine.parquet    every row a warning rule failed, with why
    H/validation/<snapshot>/tables/<table>.parquet the rows that passed: what training reads

A stage that needs data calls ``require_passed``: it refuses a snapshot that failed, or that
was never validated, with a message naming the failed expectations.
"""

from __future__ import annotations

import json
from pathlib import Path

from medmeta.atomic import write_json
from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.store_version import check_store_version


def validation_dir(home: Home, snapshot: str) -> Path:
    return home.root / "validation" / snapshot


def result_path(home: Home, snapshot: str) -> Path:
    return validation_dir(home, snapshot) / "result.json"


def record_result(home: Home, result: dict) -> None:
    write_json(result_path(home, result["snapshot"]), result)


def read_result(home: Home, snapshot: str) -> dict | None:
    path = result_path(home, snapshot)
    return json.loads(path.read_text()) if path.exists() else None


def current_snapshot(home: Home) -> str:
    if not home.manifest.exists():
        raise MedmetaError(f"no snapshot in {home.root}: run `medmeta ingest` first")
    check_store_version(home)
    return json.loads(home.manifest.read_text())["snapshot"]


def require_passed(home: Home, snapshot: str | None = None) -> dict:
    """The validation result of a snapshot that passed; a clear error otherwise."""
    snapshot = snapshot or current_snapshot(home)
    result = read_result(home, snapshot)
    if result is None:
        raise MedmetaError(f"snapshot {snapshot} has not been validated: run `medmeta validate` first")
    if not result["success"]:
        failed = ", ".join(f"{f['table']}.{f['rule']}" for f in result["critical_failures"])
        raise MedmetaError(f"snapshot {snapshot} failed validation (critical: {failed}); fix the data and ingest again")
    return result
