"""The Great Expectations core of validation/: rules from YAML, suites, report, quarantine.

The canonical tables come from the real synthetic cohort run through the real ingest steps
(without Prefect, to stay fast); every fault is planted in a copy at known rows.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medmeta.errors import MedmetaError
from medmeta.schema import TABLES
from tests.conftest import TEST_KEY
from validation.coverage import label_coverage
from validation.rules import DEFAULT_RULES, SUPPORTED, load_rules
from validation.run import validate_tables

UNITS = Path(__file__).resolve().parents[1] / "medmeta" / "config" / "units.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, pd.DataFrame]:
    from medmeta.ingest.consolidate import consolidate
    from medmeta.ingest.image_parts import write_image_batch
    from medmeta.ingest.ledger import Ledger
    from medmeta.ingest.pool import WorkerPool
    from medmeta.ingest.setup import IngestSetup
    from medmeta.landing.walk import discover
    from medmeta.synth.generate import generate_cohort

    root = tmp_path_factory.mktemp("validation-core")
    landing, home = root / "landing", root / "home"
    generate_cohort(landing, patients=120, seed=3, faults=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        setup = IngestSetup.create(str(landing), str(home), workers=1)
        items = discover(setup.source, setup.config)
        with WorkerPool(setup.worker_context, 1) as pool:
            results = pool.map(items)
        write_image_batch(setup.home.parts, setup.config.image_size, [p for _, p in results if p])
        ledger = Ledger.load(setup.home.ledger)
        ledger.record(str(setup.source), [o for o, _ in results])
        ledger.save()
        consolidate(setup.home, ledger.active_hashes(), setup.pseudonymizer, setup.config.image_size)
    return {name: pd.read_parquet(home / "store" / f"{name}.parquet") for name in TABLES}


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def copy_of(store):
    return {name: frame.copy() for name, frame in store.items()}


def rows_where(frame: pd.DataFrame, column: str, value, n: int = 2) -> list:
    labels = frame.index[frame[column] == value][:n].tolist()
    assert len(labels) == n, f"the cohort has too few rows with {column} == {value}"
    return labels


def test_clean_cohort_passes(store, rules):
    report = validate_tables(store, rules)
    failed = [(r.table, r.rule, r.sample, r.error) for r in report.results if not r.success]
    assert failed == []
    assert report.success and report.critical_failures == [] and report.warnings == []
    assert report.rows_checked == sum(len(f) for f in store.values())
    assert len(report.results) == len(rules.all())
    kept, quarantined = report.quarantine(store)
    assert quarantined.empty
    assert all(len(kept[t]) == len(store[t]) for t in store)
    by_rule = {(r.table, r.rule): r for r in report.results}
    # a conditioned rule looks at its code's rows only
    glucose = (store["observations"]["code"] == "14749-6").sum()
    assert by_rule[("observations", "glucose_range")].element_count == glucose > 0
    assert by_rule[("patients", "not_empty")].element_count == len(store["patients"])


# Each case: a fault planted in a copy -> (table, rule that must fail, severity, planted index
# labels, other rules the same fault may also trip).
def plant_duplicate_patient(t):
    p = t["patients"]
    t["patients"] = pd.concat([p, p.iloc[[3]].set_axis([len(p) + 7])])
    return "patients", "patient_id_unique", "critical", [p.index[3], len(p) + 7], set()


def plant_sex(t):
    t["patients"].loc[[2, 7], "sex"] = "X"
    return "patients", "sex_known", "warning", [2, 7], set()


def plant_age(t):
    t["patients"].loc[[5, 11], "age_years"] = 150
    return "patients", "age_plausible", "warning", [5, 11], set()


def plant_icd(t):
    t["conditions"].loc[[1, 9], "code"] = "BAD"
    t["conditions"].loc[[2], "code"] = "G35.D"  # valid: a letter after the dot
    return "conditions", "icd10cm_format", "warning", [1, 9], set()


def plant_orphan_condition(t):
    t["conditions"].loc[[0, 4], "patient_id"] = "P00000000000000000000"
    return "conditions", "patient_exists", "warning", [0, 4], set()


def plant_loinc(t):
    t["observations"].loc[[3, 30, 31], "code"] = "12X"
    return "observations", "loinc_format", "warning", [3, 30, 31], {"code_canonical"}


def plant_glucose_in_mg_dl(t):
    obs = t["observations"]
    obs.index = obs.index + 1000  # labels, not positions, come back
    rows = rows_where(obs, "code", "14749-6", 3)
    obs.loc[rows, "value"] = 110.0  # mg/dL left unconverted; the unit still says mmol/L
    return "observations", "glucose_range", "warning", rows, set()


def plant_wrong_unit(t):
    obs = t["observations"]
    rows = rows_where(obs, "code", "14682-9", 2)
    obs.loc[rows, "unit"] = "mg/dL"
    return "observations", "creatinine_unit", "warning", rows, set()


def plant_alias_code(t):
    obs = t["observations"]
    rows = rows_where(obs, "code", "14749-6", 2)
    obs.loc[rows, "code"] = "2345-7"  # a glucose alias left unmapped
    return "observations", "code_canonical", "warning", rows, set()


def plant_atc(t):
    t["medication_exposures"].loc[[0, 6], "drug_code"] = "metformin"
    return "medication_exposures", "atc_format", "warning", [0, 6], set()


def plant_outcome(t):
    t["medication_exposures"].loc[[3], "outcome"] = "maybe"
    return "medication_exposures", "outcome_known", "warning", [3], set()


def plant_modality(t):
    t["images"].loc[[1, 8], "modality"] = "XX"
    return "images", "modality_known", "warning", [1, 8], set()


def plant_flat_pixels(t):
    img = t["images"]
    img.loc[[2, 5], "pixel_max"] = img.loc[[2, 5], "pixel_min"]
    return "images", "pixel_range_not_flat", "warning", [2, 5], set()


def plant_nan_pixels(t):
    t["images"].loc[[4], "pixel_min"] = np.nan
    return "images", "pixel_min_present", "warning", [4], {"pixel_range_not_flat"}


def plant_inf_pixels(t):
    t["images"].loc[[6], "pixel_max"] = np.inf
    return "images", "pixel_max_finite", "warning", [6], set()


def plant_small_image(t):
    t["images"].loc[[0], "width"] = 8
    return "images", "width_min", "warning", [0], set()


def plant_empty_table(t):
    t["medication_exposures"] = t["medication_exposures"].iloc[:0]
    return "medication_exposures", "not_empty", "critical", [], set()


CASES = [
    plant_duplicate_patient, plant_sex, plant_age, plant_icd, plant_orphan_condition, plant_loinc,
    plant_glucose_in_mg_dl, plant_wrong_unit, plant_alias_code, plant_atc, plant_outcome, plant_modality,
    plant_flat_pixels, plant_nan_pixels, plant_inf_pixels, plant_small_image, plant_empty_table,
]


@pytest.mark.parametrize("plant", CASES, ids=[c.__name__[6:] for c in CASES])
def test_planted_fault_is_caught(store, rules, plant):
    tables = copy_of(store)
    table, rule, severity, rows, also = plant(tables)
    report = validate_tables(tables, rules)

    hit = report.result(table, rule)
    assert not hit.success and hit.severity == severity
    assert sorted(hit.rows) == sorted(rows)
    assert hit.unexpected_count == (len(rows) if rows else hit.unexpected_count)
    assert 0 < len(hit.sample) <= 5 if rows else hit.sample == []
    assert all(isinstance(v, str) for v in hit.sample)
    failed = {(r.table, r.rule) for r in report.results if not r.success}
    assert failed <= {(table, rule)} | {(table, other) for other in also}
    assert report.success == (severity != "critical")

    kept, quarantined = report.quarantine(tables)
    for name, frame in tables.items():
        moved = quarantined[quarantined["table"] == name]
        assert len(frame) == len(kept[name]) + len(moved)  # nothing silently dropped
        assert not set(kept[name].index) & set(moved["row"])
    if severity == "critical":
        assert quarantined.empty  # critical failures fail the gate; they move no rows
    else:
        assert sorted(quarantined["row"]) == sorted(rows)
        assert (quarantined["table"] == table).all()
        assert all(rule in e.split("; ") for e in quarantined["expectations"])
        assert list(quarantined["source"]) == [tables[table].loc[r, "source"] for r in quarantined["row"]]
        assert all(rule in reason for reason in quarantined["reason"])


def test_missing_table_is_a_critical_failure(store, rules):
    tables = {k: v for k, v in store.items() if k != "images"}
    report = validate_tables(tables, rules)
    assert [(r.table, r.rule) for r in report.critical_failures] == [("images", "not_empty")]
    assert report.row_counts["images"] == 0


# ---- rules files ----

def write(tmp_path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BAD_RULES = {
    "unknown expectation": (
        "patients: [{expectation: ExpectColumnValuesToBeAwesome, column: sex, severity: warning}]",
        "unknown expectation 'ExpectColumnValuesToBeAwesome'"),
    "wrong column": (
        "patients: [{expectation: ExpectColumnValuesToNotBeNull, column: mrn, severity: warning}]",
        "column 'mrn' is not a column of patients"),
    "mostly above 1": (
        "patients: [{expectation: ExpectColumnValuesToNotBeNull, column: sex, mostly: 1.5, severity: warning}]",
        "mostly must be a number in (0, 1]"),
    "min above max": (
        "patients: [{expectation: ExpectColumnValuesToBeBetween, column: age_years, min_value: 9, max_value: 1, severity: warning}]",
        "min_value 9 is above max_value 1"),
    "non-numeric bound": (
        "patients: [{expectation: ExpectColumnValuesToBeBetween, column: age_years, min_value: old, severity: warning}]",
        "min_value must be a number"),
    "unknown severity": (
        "patients: [{expectation: ExpectColumnValuesToNotBeNull, column: sex, severity: fatal}]",
        "severity must be one of critical, warning"),
    "bad value_set_from": (
        "conditions: [{expectation: ExpectColumnValuesToBeInSet, column: patient_id, value_set_from: people.id, severity: warning}]",
        "value_set_from people.id"),
    "where on a missing column": (
        "observations: [{expectation: ExpectColumnValuesToBeBetween, column: value, min_value: 1, where: {loinc: '1-1'}, severity: warning}]",
        "where column 'loinc'"),
}


@pytest.mark.parametrize("name", BAD_RULES)
def test_bad_rules_are_refused_before_validation(tmp_path, name):
    body, problem = BAD_RULES[name]
    path = write(tmp_path, f"tables:\n  {body}\n")
    with pytest.raises(MedmetaError) as err:
        load_rules(path)
    message = str(err.value)
    assert str(path) in message and "rule 1" in message and problem in message
    assert body.split(":")[0] in message  # the table


def test_unknown_table_is_refused(tmp_path):
    path = write(tmp_path, "tables:\n  visits: []\n")
    with pytest.raises(MedmetaError, match="unknown table 'visits'"):
        load_rules(path)


def test_user_file_replaces_the_tables_it_names(tmp_path, store):
    path = write(tmp_path, """\
        label_coverage: {meta_train_min_cases: 5, meta_test_min_cases: 2}
        tables:
          patients:
            - {id: ages, expectation: ExpectColumnValuesToBeBetween, column: age_years, max_value: 60, mostly: 0.1, severity: warning}
        """)
    custom, default = load_rules(path), load_rules()
    assert [r.id for r in custom.tables["patients"]] == ["ages"]
    assert custom.tables["observations"] == default.tables["observations"]
    assert (custom.label_coverage.meta_train_min_cases, custom.label_coverage.meta_test_min_cases) == (5, 2)
    report = validate_tables({"patients": store["patients"]}, load_rules(path))
    ages = report.result("patients", "ages")
    assert ages.success and ages.unexpected_count > 0  # passes thanks to mostly ...
    kept, quarantined = report.quarantine({"patients": store["patients"]})
    assert quarantined.empty  # ... so it moves nothing


def test_supported_expectations_exist_in_great_expectations():
    import great_expectations.expectations as gxe

    for name, (kind, allowed) in SUPPORTED.items():
        cls = getattr(gxe, name)
        fields = set(cls.__fields__)
        needed = {"column": {"column"}, "pair": {"column_A", "column_B"}, "table": set()}[kind]
        assert needed | allowed <= fields, name


def test_observation_rules_match_the_canonical_units(rules):
    analytes = yaml.safe_load(UNITS.read_text())["analytes"]
    canonical = {(a["loinc"], a["unit"]) for a in analytes.values()}
    obs = {r.id: r for r in rules.tables["observations"]}
    assert set(obs["code_canonical"].kwargs["value_set"]) == {code for code, _ in canonical}
    units = {(r.where["code"], r.kwargs["value_set"][0]) for r in obs.values() if r.where and r.kwargs["column"] == "unit"}
    assert units == canonical
    ranged = [r.where["code"] for r in obs.values() if r.where and r.kwargs["column"] == "value"]
    assert sorted(ranged) == sorted(code for code, _ in canonical)
    assert yaml.safe_load(DEFAULT_RULES.read_text())["label_coverage"]


def test_label_coverage_flags_and_never_drops(store, rules):
    coverage = label_coverage(store, rules)
    diseases = {c["code"]: c for c in coverage if c["kind"] == "disease"}
    drugs = {c["code"]: c for c in coverage if c["kind"] == "drug"}
    assert set(diseases) == set(store["conditions"]["code"])
    assert set(drugs) == set(store["medication_exposures"]["drug_code"])
    lc = rules.label_coverage
    for c in coverage:
        table = store[c["table"]]
        column = "code" if c["kind"] == "disease" else "drug_code"
        assert c["patients"] == table.loc[table[column] == c["code"], "patient_id"].nunique()
        expected = ("meta_train" if c["patients"] >= lc.meta_train_min_cases
                    else "meta_test_only" if c["patients"] >= lc.meta_test_min_cases else "too_few")
        assert c["role"] == expected
    assert {c["role"] for c in coverage} >= {"meta_train", "meta_test_only"}


def test_where_with_several_values_and_columns_flags_the_callers_rows(tmp_path):
    """Rules sharing a ``where`` run as one batch of the rows it selects: the flagged rows must
    come back as the caller's index labels, and rows outside the ``where`` are never looked at."""
    path = write(tmp_path, """\
        tables:
          observations:
            - {id: two_codes, expectation: ExpectColumnValuesToBeBetween, column: value, max_value: 10,
               where: {code: ["a-1", "b-2"], site: s1}, severity: warning}
            - {id: same_scope, expectation: ExpectColumnValuesToNotBeNull, column: unit,
               where: {code: ["a-1", "b-2"], site: s1}, severity: warning}
            - {id: one_code, expectation: ExpectColumnValuesToBeBetween, column: value, min_value: 0, where: {code: "c-3"},
               severity: warning}
        """)
    frame = pd.DataFrame({
        "code": ["a-1", "b-2", "a-1", "c-3", "a-1", "b-2", None, "c-3"],
        "site": ["s1", "s1", "s2", "s1", "s1", "s1", "s1", "s2"],
        "value": [1.0, 50.0, 99.0, -1.0, 11.0, 2.0, 99.0, 5.0],
        "unit": ["u", "u", None, "u", None, "u", "u", "u"],
    }, index=[100, 101, 102, 103, 104, 105, 106, 107])
    report = validate_tables({"observations": frame}, load_rules(path))
    two, scope, one = (report.result("observations", r) for r in ("two_codes", "same_scope", "one_code"))
    assert (two.element_count, two.rows) == (4, [101, 104])  # 102 is site s2, 106 has no code
    assert (scope.element_count, scope.rows) == (4, [104])
    assert (one.element_count, one.rows, one.sample) == (2, [103], ["-1.0"])
    kept, quarantined = report.quarantine({"observations": frame})
    assert sorted(quarantined["row"]) == [101, 103, 104] and len(kept["observations"]) == 5
