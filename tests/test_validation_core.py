"""The Great Expectations core of validation/: rules from YAML, suites, report, quarantine.

The canonical tables come from the real synthetic cohort run through the real ingest steps
(without Prefect, to stay fast), filled to schema v2 where the ingest leaves a column empty
(``as_v2``); every fault is planted in a copy at known rows.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.schema import TABLES
from medmeta.terminology.systems import ATC, ICD10CM, LOINC, SNOMED
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY
from validation.coverage import coverage_roles, label_coverage
from validation.rules import DEFAULT_RULES, SUPPORTED, load_rules
from validation.run import validate_tables
from validation.snapshot import load_tables

KEY = Pseudonymizer(TEST_KEY)  # keys the masks of text samples
UNITS = Path(__file__).resolve().parents[1] / "medmeta" / "config" / "units.yaml"

# The code system of each coded table's codes in the synthetic cohort (ICD-10-CM, LOINC, ATC).
SYNTHETIC_SYSTEMS = {"conditions": ("system", ICD10CM), "observations": ("system", LOINC),
                     "medication_exposures": ("drug_system", ATC)}


def canonical_frame(table: str, data: dict | pd.DataFrame, index=None) -> pd.DataFrame:
    """A frame of ``table`` with every canonical column: the given ones, the others null
    (``censored`` False)."""
    frame = pd.DataFrame(data, index=index)
    for column in TABLES[table].names:
        if column not in frame.columns:
            frame[column] = False if column == "censored" else None
    return frame


def as_v2(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables in the canonical schema v2: a column the frame lacks is added (null; ``censored``
    False), and a null code system is the synthetic cohort's. A no-op on tables an ingest already
    wrote in full."""
    out = {}
    for name, frame in tables.items():
        frame = frame.copy()
        for column in TABLES[name].names:
            if column not in frame.columns:
                frame[column] = False if column == "censored" else None
        if name in SYNTHETIC_SYSTEMS:
            column, system = SYNTHETIC_SYSTEMS[name]
            frame[column] = frame[column].where(frame[column].notna(), system)
        out[name] = frame[[*TABLES[name].names, *(c for c in frame.columns if c not in TABLES[name].names)]]
    return out


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
        ledger = Ledger.load(setup.home.ledger, setup.pseudonymizer)
        ledger.record(setup.source, [o for o, _ in results])
        ledger.save()
        consolidate(setup.home, ledger.active_hashes(), setup.pseudonymizer, setup.config.image_size)
    return as_v2(load_tables(Home(home)))  # the one way the store is read (images: read_images)


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
    report = validate_tables(store, rules, pseudonymizer=KEY)
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
    assert by_rule[("require", "any_of")].success
    assert by_rule[("conditions", "icd10cm_format")].element_count == len(store["conditions"])
    assert by_rule[("conditions", "snomed_format")].element_count == 0  # no SNOMED CT code in the cohort
    assert report.empty_tables == []


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
    t["conditions"].loc[[3], "code"] = "E119"  # valid: ICD-10-CM without its dot
    t["conditions"].loc[[4], "code"] = "S52.521A"  # valid: seven characters
    t["conditions"].loc[[5], "code"] = "U07.1"  # valid: COVID-19, a U code
    return "conditions", "icd10cm_format", "warning", [1, 9], set()


def plant_icd_malformed_dot(t):
    t["conditions"].loc[[6], "code"] = "E11."  # a dot and nothing after it
    t["conditions"].loc[[7], "code"] = "E1.19"  # the dot in the wrong place
    t["conditions"].loc[[8], "code"] = "e11.9"  # lower case
    return "conditions", "icd10cm_format", "warning", [6, 7, 8], set()


def plant_snomed_check_digit(t):
    t["conditions"].loc[[0, 1, 2], "system"] = SNOMED
    t["conditions"].loc[[0], "code"] = "44054006"  # diabetes mellitus type 2: valid
    t["conditions"].loc[[1], "code"] = "44054007"  # its check digit off by one
    t["conditions"].loc[[2], "code"] = "E11.9"  # an ICD-10-CM code under the SNOMED CT system
    return "conditions", "snomed_format", "warning", [1, 2], set()


def plant_missing_system(t):
    t["conditions"].loc[[3, 8], "system"] = None
    return "conditions", "system_not_null", "warning", [3, 8], set()


def plant_orphan_condition(t):
    t["conditions"].loc[[0, 4], "patient_id"] = "P00000000000000000000"
    return "conditions", "patient_exists", "warning", [0, 4], set()


def plant_loinc(t):
    t["observations"].loc[[3, 30, 31], "code"] = "12X"
    return "observations", "loinc_format", "warning", [3, 30, 31], set()


def plant_loinc_check_digit(t):
    obs = t["observations"]
    rows = rows_where(obs, "code", "718-7", 2)
    obs.loc[rows, "code"] = "718-8"  # hemoglobin with a wrong check digit
    return "observations", "loinc_format", "warning", rows, set()


def plant_missing_value(t):
    obs = t["observations"]
    obs.loc[[5, 6], "value"] = np.nan  # a measurement without its number ...
    obs.loc[[7], ["value", "unit", "value_system", "value_code"]] = [np.nan, None, SNOMED, "266919005"]  # ... a categorical value: fine
    return "observations", "value_not_null", "warning", [5, 6], set()


def plant_boolean_value(t):
    obs = t["observations"]
    obs.loc[[9, 10], ["value", "unit", "value_system"]] = [np.nan, None, "http://hl7.org/fhir/boolean"]
    obs.loc[[9], "value_code"] = "true"
    obs.loc[[10], "value_code"] = "yes"
    return "observations", "value_boolean", "warning", [10], set()


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


def plant_atc(t):
    t["medication_exposures"].loc[[0, 6], "drug_code"] = "metformin"
    return "medication_exposures", "atc_format", "warning", [0, 6], set()


def plant_rxnorm(t):
    meds = t["medication_exposures"]
    meds.loc[[1, 2, 3], "drug_system"] = "http://www.nlm.nih.gov/research/umls/rxnorm"
    meds.loc[[1], "drug_code"] = "860975"  # metformin 24 HR 500 MG: valid
    meds.loc[[2], "drug_code"] = "A10BA02"  # an ATC code under the RxNorm system
    meds.loc[[3], "drug_code"] = "0860975"
    return "medication_exposures", "rxnorm_format", "warning", [2, 3], set()


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


def plant_empty_required_table(t):
    t["patients"] = t["patients"].iloc[:0]
    # every other table's rows now name patients that do not exist
    also = {"patient_exists"}
    return "patients", "not_empty", "critical", [], also


CASES = [
    plant_duplicate_patient, plant_sex, plant_age, plant_icd, plant_icd_malformed_dot, plant_snomed_check_digit,
    plant_missing_system, plant_orphan_condition, plant_loinc, plant_loinc_check_digit, plant_missing_value,
    plant_boolean_value, plant_glucose_in_mg_dl, plant_wrong_unit, plant_atc, plant_rxnorm, plant_outcome,
    plant_modality, plant_flat_pixels, plant_nan_pixels, plant_inf_pixels, plant_small_image,
    plant_empty_required_table,
]


@pytest.mark.parametrize("plant", CASES, ids=[c.__name__[6:] for c in CASES])
def test_planted_fault_is_caught(store, rules, plant):
    tables = copy_of(store)
    table, rule, severity, rows, also = plant(tables)
    report = validate_tables(tables, rules, pseudonymizer=KEY)

    hit = report.result(table, rule)
    assert not hit.success and hit.severity == severity
    assert sorted(hit.rows) == sorted(rows)
    assert hit.unexpected_count == (len(rows) if rows else hit.unexpected_count)
    assert 0 < len(hit.sample) <= 5 if rows else hit.sample == []
    assert all(isinstance(v, str) for v in hit.sample)
    failed = {(r.table, r.rule) for r in report.results if not r.success}
    others = {(t, other) for t in TABLES for other in also} if rule == "not_empty" else {(table, o) for o in also}
    assert failed <= {(table, rule)} | others
    assert report.success == (severity != "critical")

    kept, quarantined = report.quarantine(tables)
    for name, frame in tables.items():
        moved = quarantined[quarantined["table"] == name]
        assert len(frame) == len(kept[name]) + len(moved)  # nothing silently dropped
        assert not set(kept[name].index) & set(moved["row"])
    if severity == "critical":
        assert set(quarantined["expectations"]) <= also  # critical failures fail the gate; they move no rows
    else:
        assert sorted(quarantined["row"]) == sorted(rows)
        assert (quarantined["table"] == table).all()
        assert all(rule in e.split("; ") for e in quarantined["expectations"])
        assert list(quarantined["source"]) == [tables[table].loc[r, "source"] for r in quarantined["row"]]
        assert all(rule in reason for reason in quarantined["reason"])


# ---- what the delivery must hold: `require` ----

def test_a_records_only_snapshot_passes(store, rules):
    """No images and no medications: neither is required by default, so the snapshot passes and
    reports them as empty."""
    tables = {k: v for k, v in store.items() if k != "images"}
    tables["medication_exposures"] = tables["medication_exposures"].iloc[:0]
    report = validate_tables(tables, rules, pseudonymizer=KEY)
    assert report.success and report.critical_failures == [] and report.warnings == []
    assert report.empty_tables == ["medication_exposures", "images"]
    assert report.row_counts["images"] == 0 and report.row_counts["medication_exposures"] == 0
    assert report.to_dict()["empty_tables"] == ["medication_exposures", "images"]
    assert report.to_dict()["require"] == {"tables": ["patients"],
                                           "any_of": ["conditions", "observations", "medication_exposures"]}
    assert [r.rule for r in report.results if r.table == "images"] == [r.id for r in rules.tables["images"]]


def test_a_delivery_that_promised_images_fails_without_them(tmp_path, store):
    path = write(tmp_path, "require: {tables: [patients, images]}\n")
    rules = load_rules(path)
    assert rules.require.tables == ("patients", "images")
    assert rules.require.any_of == ("conditions", "observations", "medication_exposures")  # kept
    assert rules.tables["images"][0].id == "not_empty" and rules.tables["images"][0].severity == "critical"
    tables = {k: v for k, v in store.items() if k != "images"}
    report = validate_tables(tables, rules, pseudonymizer=KEY)
    assert not report.success
    assert [(r.table, r.rule) for r in report.critical_failures] == [("images", "not_empty")]
    assert validate_tables(store, rules, pseudonymizer=KEY).success  # with its images it passes


def test_no_records_at_all_fails_require_any_of(store, rules):
    tables = {"patients": store["patients"], "images": store["images"]}
    report = validate_tables(tables, rules, pseudonymizer=KEY)
    assert [(r.table, r.rule) for r in report.critical_failures] == [("require", "any_of")]
    only_drugs = {**tables, "medication_exposures": store["medication_exposures"]}
    assert validate_tables(only_drugs, rules, pseudonymizer=KEY).success  # one of any_of is enough


def test_require_can_ask_for_nothing_and_for_everything(tmp_path, store):
    nothing = load_rules(write(tmp_path, "require: {tables: [], any_of: []}\n"))
    assert nothing.delivery == () and all(r.id != "not_empty" for r in nothing.all())
    assert validate_tables({}, nothing, pseudonymizer=KEY).success
    path = tmp_path / "all.yaml"
    path.write_text("require: {tables: [patients, conditions, observations, medication_exposures, images]}\n")
    everything = load_rules(path)
    assert validate_tables(store, everything, pseudonymizer=KEY).success
    report = validate_tables({k: v for k, v in store.items() if k != "conditions"}, everything, pseudonymizer=KEY)
    assert [(r.table, r.rule) for r in report.critical_failures] == [("conditions", "not_empty")]


BAD_REQUIRE = {
    "unknown table": ("require: {tables: [patients, xrays]}", "require.tables: unknown table 'xrays'"),
    "unknown any_of table": ("require: {any_of: [labs]}", "require.any_of: unknown table 'labs'"),
    "not a list": ("require: {tables: images}", "require.tables must be a list of table names"),
    "not a mapping": ("require: [patients, images]", "require must be a mapping"),
    "unknown key": ("require: {tables: [patients], all_of: [images]}", "require: unknown key(s) ['all_of']"),
    "a table twice": ("require: {tables: [images, images]}", "require.tables names a table twice"),
    "a number": ("require: {tables: [1]}", "require.tables must be a list of table names"),
}


@pytest.mark.parametrize("name", BAD_REQUIRE)
def test_a_bad_require_is_refused_before_validation(tmp_path, name):
    body, problem = BAD_REQUIRE[name]
    path = write(tmp_path, body + "\n")
    with pytest.raises(MedmetaError) as err:
        load_rules(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_a_not_empty_rule_of_its_own_is_refused(tmp_path):
    path = write(tmp_path, """\
        tables:
          images:
            - {id: not_empty, expectation: ExpectTableRowCountToBeBetween, min_value: 1, severity: critical}
        """)
    with pytest.raises(MedmetaError, match="reserved.*require") as err:
        load_rules(path)
    assert str(path) in str(err.value) and "table images, rule 1" in str(err.value)


def test_a_where_on_null_selects_the_null_rows(tmp_path):
    path = write(tmp_path, """\
        tables:
          observations:
            - {id: measured, expectation: ExpectColumnValuesToNotBeNull, column: value, where: {value_code: null},
               severity: warning}
            - {id: loinc_or_none, expectation: ExpectColumnValuesToNotBeNull, column: unit,
               where: {system: [loinc, null], value_code: null}, severity: warning}
        """)
    rules = load_rules(path)
    assert rules.tables["observations"][1].where == {"system": [LOINC, None], "value_code": None}  # loinc: its URI
    frame = pd.DataFrame({
        "system": [LOINC, LOINC, LOINC, None, SNOMED, LOINC],
        "value": [1.0, None, None, 2.0, None, 3.0],
        "value_code": [None, None, "LA6576-8", None, None, None],
        "unit": ["g", "g", None, None, None, None],
    }, index=[10, 11, 12, 13, 14, 15])
    report = validate_tables({"observations": frame}, rules, pseudonymizer=KEY)
    measured, unit = report.result("observations", "measured"), report.result("observations", "loinc_or_none")
    assert (measured.element_count, measured.rows) == (5, [11, 14])  # 12 is categorical
    assert (unit.element_count, unit.rows) == (4, [13, 15])  # 12 is categorical, 14 is SNOMED CT


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
    assert [r.id for r in custom.tables["patients"]] == ["not_empty", "ages"]  # patients stay required
    assert custom.tables["observations"] == default.tables["observations"]
    assert (custom.label_coverage.meta_train_min_cases, custom.label_coverage.meta_test_min_cases) == (5, 2)
    report = validate_tables({"patients": store["patients"]}, load_rules(path), pseudonymizer=KEY)
    ages = report.result("patients", "ages")
    assert ages.success and ages.unexpected_count > 0  # passes thanks to mostly ...
    kept, quarantined = report.quarantine({"patients": store["patients"]})
    assert quarantined.empty  # ... so it moves nothing


def test_supported_expectations_exist_in_great_expectations():
    from validation.suites import expectation_class

    for name, (kind, allowed) in SUPPORTED.items():
        cls = expectation_class(name)
        fields = set(cls.__fields__)
        needed = {"column": {"column"}, "pair": {"column_A", "column_B"}, "table": set()}[kind]
        assert needed | allowed <= fields, name


def test_observation_rules_match_the_canonical_units(rules):
    """Each analyte with a unit rule is one medmeta/config/units.yaml lists, in its canonical unit,
    and has a plausible range (not every listed analyte has rules yet)."""
    analytes = yaml.safe_load(UNITS.read_text())["analytes"]
    canonical = {(a["loinc"], a["unit"]) for a in analytes.values()}
    obs = {r.id: r for r in rules.tables["observations"]}
    assert "code_canonical" not in obs  # any LOINC code is welcome; its format is checked
    per_code = [r for r in obs.values() if r.where and "code" in r.where]
    assert all(r.where["system"] == LOINC for r in per_code)
    units = {(r.where["code"], r.kwargs["value_set"][0]) for r in per_code if r.kwargs["column"] == "unit"}
    assert len(units) >= 13 and units <= canonical
    ranged = [r.where["code"] for r in per_code if r.kwargs["column"] == "value"]
    assert sorted(ranged) == sorted(code for code, _ in units)
    assert yaml.safe_load(DEFAULT_RULES.read_text())["label_coverage"]


def test_label_coverage_flags_and_never_drops(store, rules):
    coverage = label_coverage(store, rules)
    diseases = {(c["system"], c["code"]): c for c in coverage if c["kind"] == "disease"}
    drugs = {(c["system"], c["code"]): c for c in coverage if c["kind"] == "drug"}
    assert set(diseases) == set(zip(store["conditions"]["system"], store["conditions"]["code"]))
    meds = store["medication_exposures"]
    assert set(drugs) == set(zip(meds["drug_system"], meds["drug_code"]))
    assert set(coverage[0]) == {"kind", "table", "system", "code", "display", "patients", "role"}
    lc = rules.label_coverage
    for c in coverage:
        table = store[c["table"]]
        system, column = ("system", "code") if c["kind"] == "disease" else ("drug_system", "drug_code")
        concept = (table[system] == c["system"]) & (table[column] == c["code"])
        assert c["patients"] == table.loc[concept, "patient_id"].nunique()
        expected = ("meta_train" if c["patients"] >= lc.meta_train_min_cases
                    else "meta_test_only" if c["patients"] >= lc.meta_test_min_cases else "too_few")
        assert c["role"] == expected
    assert {c["role"] for c in coverage} >= {"meta_train", "meta_test_only"}
    roles = coverage_roles(coverage)
    assert len(roles) == len(coverage) and all(roles[(c["kind"], c["system"], c["code"])] == c["role"] for c in coverage)


def test_label_coverage_tells_one_code_in_two_systems_apart(rules):
    """A concept is a code within its system: the same code string in two systems is two concepts,
    and the display shown is the concept's most frequent one."""
    patients = [f"P{i}" for i in range(30)]
    conditions = pd.DataFrame({
        "patient_id": patients[:25] + patients[:12],
        "system": [SNOMED] * 25 + ["http://example.org/local-dx"] * 12,
        "code": ["1234"] * 37,
        "display": ["Sore"] * 20 + ["sore"] * 4 + [None] + ["local sore"] * 12,
    })
    coverage = label_coverage({"conditions": conditions}, rules)
    assert [(c["system"], c["code"], c["display"], c["patients"], c["role"]) for c in coverage] == [
        (SNOMED, "1234", "Sore", 25, "meta_train"),
        ("http://example.org/local-dx", "1234", "local sore", 12, "meta_test_only"),
    ]


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
    report = validate_tables({"observations": frame}, load_rules(path), pseudonymizer=KEY)
    two, scope, one = (report.result("observations", r) for r in ("two_codes", "same_scope", "one_code"))
    assert (two.element_count, two.rows) == (4, [101, 104])  # 102 is site s2, 106 has no code
    assert (scope.element_count, scope.rows) == (4, [104])
    assert (one.element_count, one.rows, one.sample) == (2, [103], ["-1.0"])
    kept, quarantined = report.quarantine({"observations": frame})
    assert sorted(quarantined["row"]) == [101, 103, 104] and len(kept["observations"]) == 5
