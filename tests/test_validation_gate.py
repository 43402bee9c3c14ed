"""The gate: later stages refuse a snapshot that failed validation or was never validated."""

from __future__ import annotations

import pytest

from medmeta.atomic import write_json
from medmeta.errors import MedmetaError
from medmeta.home import Home
from validation.gate import record_result, require_passed


def _home(tmp_path, snapshot="abc123"):
    home = Home(tmp_path / "h").ensure()
    write_json(home.manifest, {"snapshot": snapshot})
    return home


def test_a_snapshot_never_validated_is_refused(tmp_path):
    with pytest.raises(MedmetaError, match="has not been validated"):
        require_passed(_home(tmp_path))


def test_a_failed_snapshot_is_refused_naming_the_expectations(tmp_path):
    home = _home(tmp_path)
    record_result(home, {"snapshot": "abc123", "success": False,
                         "critical_failures": [{"table": "patients", "rule": "patient-id-unique"}]})
    with pytest.raises(MedmetaError, match=r"abc123 failed validation \(critical: patients.patient-id-unique\)"):
        require_passed(home)


def test_a_passed_snapshot_goes_through(tmp_path):
    home = _home(tmp_path)
    record_result(home, {"snapshot": "abc123", "success": True, "critical_failures": []})
    assert require_passed(home)["success"] is True


def test_no_snapshot_at_all(tmp_path):
    with pytest.raises(MedmetaError, match="run `medmeta ingest` first"):
        require_passed(Home(tmp_path / "empty").ensure())
