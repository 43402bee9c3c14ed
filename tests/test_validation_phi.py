"""A name in a checked column of the store reaches nothing validation writes (issue 12).

The attack: a snapshot whose text columns hold a patient's name where a code, a unit, a
comparator, a sex or an outcome belongs (written into the store directly, as a store written
before canonicalisation refused such values would hold them). The real validation flow runs
against the real Prefect API; afterwards every byte of the home outside the quarantine folder
and the store that holds the planted tables, the Prefect database with its WAL, the terminal
output and the log records are searched for the names. The gate still fails loudly, naming
the rules and the columns, with the values as keyed hashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from medmeta.pseudonyms import KEY_BLOCK_ENV, KEY_ENV, Pseudonymizer
from medmeta.records.masking import masked
from tests.conftest import TEST_KEY, ingested_home
from tests.phi_search import leaks
from tests.test_validation_core import as_v2
from medmeta.schema import TABLES
from medmeta.terminology.systems import ATC, ICD10CM, LOINC

pytestmark = pytest.mark.usefixtures("prefect_api")

# Where each name is planted: (table, column, the rows it goes into, the rule it fails).
ATTACKS = {
    "condition_code": ("conditions", "code", lambda t: t["system"] == ICD10CM, "icd10cm_format"),
    "drug_code": ("medication_exposures", "drug_code", lambda t: t["drug_system"] == ATC, "atc_format"),
    "glucose_unit": ("observations", "unit", lambda t: (t["system"] == LOINC) & (t["code"] == "14749-6"),
                     "glucose_unit"),
    "comparator": ("observations", "comparator", lambda t: t["system"] == LOINC, "comparator_known"),
    "sex": ("patients", "sex", lambda t: t["patient_id"].notna(), "sex_known"),
    "outcome": ("medication_exposures", "outcome", lambda t: t["patient_id"].notna(), "outcome_known"),
}

CODES_CRITICAL = """\
tables:
  conditions:
    - {id: icd10cm_format, expectation: ExpectColumnValuesToMatchRegex, column: code,
       where: {system: "http://hl7.org/fhir/sid/icd-10-cm"},
       regex: '^[A-Z][0-9][0-9A-Z](?:\\.?[0-9A-Z]{1,4})?$', severity: critical}
"""


@pytest.fixture(scope="module")
def clean_home(tmp_path_factory) -> Path:
    return ingested_home(tmp_path_factory.mktemp("validation-phi"), patients=40, seed=23)


def plant_names(home: Path) -> dict[str, str]:
    """A different name in two rows of each attacked column; {attack: name}."""
    names = {attack: f"Smith, John Q{uuid.uuid4().hex[:10]}" for attack in ATTACKS}
    tables = as_v2({name: pd.read_parquet(home / "store" / f"{name}.parquet") for name in TABLES if name != "images"})
    for attack, (table, column, rows, _rule) in ATTACKS.items():
        frame = tables[table]
        where = frame.index[rows(frame).fillna(False).to_numpy(dtype=bool)][:2]
        assert len(where) == 2, f"the cohort has too few rows for {attack}"
        frame.loc[where, column] = names[attack]
    for name, frame in tables.items():
        frame.to_parquet(home / "store" / f"{name}.parquet", index=False)
    return names


def planted_home(clean_home: Path, target: Path) -> tuple[Path, dict[str, str]]:
    home = target / "home"
    shutil.copytree(clean_home, home, ignore=shutil.ignore_patterns("prefect"))
    return home, plant_names(home)


def outside_the_store(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """The leaks, less the store tables the test itself planted the names into."""
    return {where: hits for where, hits in found.items() if not re.fullmatch(r"store/\w+\.parquet", where)}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    return Pseudonymizer(TEST_KEY)


def test_names_failing_warning_rules_reach_no_file_artifact_or_log(clean_home, tmp_path, key, prefect_api,
                                                                     capfd, caplog):
    from flows.validate import validate_flow

    home, names = planted_home(clean_home, tmp_path)
    result = validate_flow(str(home))

    assert result["success"]  # warnings: the rows move to the validation quarantine
    failed = {(w["table"], w["rule"]) for w in result["warnings"]}
    assert {(table, rule) for table, _, _, rule in ATTACKS.values()} <= failed
    output = capfd.readouterr()
    found = leaks(list(names.values()), home=home, prefect_db=prefect_api,
                  texts={"stdout": output.out, "stderr": output.err, "log": caplog.text})
    assert not outside_the_store(found), sorted(outside_the_store(found))

    # the Data Docs (one site per run) still show each failed rule with its count
    docs = Path(result["data_docs"])
    pages = [page.read_text() for page in docs.parent.glob("validations/medmeta/conditions/**/*.html")]
    assert docs.is_file() and any("2 unexpected values found" in page for page in pages)

    # ... and an operator holding the key can still find each value: its keyed hash, length, classes
    quarantine = pd.read_parquet(home / "validation" / result["snapshot"] / "quarantine.parquet")
    records = [json.loads(r) for r in quarantine["record"]]
    for attack, (table, column, _, rule) in ATTACKS.items():
        mask = masked(names[attack], key)
        assert sum(r.get(column) == mask for r in records) == 2, attack
        [warning] = [w for w in result["warnings"] if (w["table"], w["rule"]) == (table, rule)]
        assert mask in warning["sample"]


def test_a_name_failing_a_critical_rule_fails_the_gate_naming_the_rule_not_the_name(clean_home, tmp_path, key,
                                                                                  prefect_api, capfd, caplog):
    from flows.validate import validate_flow
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from validation.gate import require_passed

    home, names = planted_home(clean_home, tmp_path)
    rules = tmp_path / "codes-critical.yaml"
    rules.write_text(CODES_CRITICAL)
    result = validate_flow(str(home), str(rules))

    assert result["success"] is False
    [failure] = result["critical_failures"]
    assert (failure["table"], failure["rule"], failure["unexpected_count"]) == ("conditions", "icd10cm_format", 2)
    assert failure["sample"] == [masked(names["condition_code"], key)] * 2
    with pytest.raises(MedmetaError, match=r"critical: conditions.icd10cm_format") as refused:
        require_passed(Home(home))
    output = capfd.readouterr()
    found = leaks(list(names.values()), home=home, prefect_db=prefect_api,
                  texts={"stdout": output.out, "stderr": output.err, "log": caplog.text,
                         "gate": str(refused.value)})
    assert not outside_the_store(found), sorted(outside_the_store(found))
    assert not (home / "validation" / result["snapshot"] / "tables").exists()  # a failed snapshot keeps none


def test_validate_without_the_pseudonym_key_is_refused_in_one_line(clean_home, tmp_path):
    home, _ = planted_home(clean_home, tmp_path)
    results = {path: path.read_bytes() for path in (home / "validation").rglob("result.json")}
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_BLOCK_ENV)}
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "validate", "--home", str(home)],
                            capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "no pseudonym key" in result.stderr
    assert results and {path: path.read_bytes() for path in (home / "validation").rglob("result.json")} == results
