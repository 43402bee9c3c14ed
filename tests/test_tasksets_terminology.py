"""Task sets over any code system: Synthea's SNOMED CT classes, concept maps, outcome rules as data.

The Synthea tables come from ``tests/fhir_bundle_tables.py`` (plain json, not medmeta's ingest) and
are written as a validated home; every count checked here is made again by the test's own code.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from medmeta.errors import MedmetaError
from medmeta.outcomes.rules import load_rules
from medmeta.tasksets.build import NotEnoughClasses, build_taskset, plan_taskset
from medmeta.tasksets.spec import make_spec
from medmeta.tasksets.store import load_taskset
from medmeta.terminology.concept_maps import load_concept_map
from medmeta.terminology.systems import ATC, ICD10CM, LOINC, RXNORM, SNOMED
from tests.fhir_bundle_tables import read_synthea, synthea_zip, write_validated_home, as_stored
from tests.test_cli import run_cli

GROUPS = "http://example.org/fhir/CodeSystem/disease-groups"
SINUSITIS = ("444814009", "40055000", "36971009", "75498004")  # viral, chronic, unspecified, acute bacterial


@pytest.fixture(scope="module")
def synthea(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return read_synthea(synthea_zip(tmp_path_factory.mktemp("synthea-zip")))


@pytest.fixture(scope="module")
def synthea_home(synthea, tmp_path_factory):
    return write_validated_home(tmp_path_factory.mktemp("synthea") / "home", synthea)


def _class_patients(tables, codes) -> dict[str, set]:
    c = tables["conditions"]
    return {code: set(c.loc[c["code"] == code, "patient_id"]) for code in codes}


# -- disease classes on real data ------------------------------------------------------------------

def test_synthea_disease_task_set_has_14_snomed_classes_of_8_patients(synthea, synthea_home):
    m = build_taskset(synthea_home, make_spec("disease", "records", name="synthea-disease"))
    assert m["classes"]["system"]["uri"] == SNOMED and m["classes"]["system"]["short"] == "sct"
    assert m["label_policy"].startswith("per-split") and "per-split" in m["classes"]["label_policy_choice"]
    ts = load_taskset(synthea_home, "synthea-disease")
    has = _class_patients(synthea, {c for s in ts.splits.values() for c in s.codes})
    big = 0
    for name in ("train", "val", "test"):
        split = ts.splits[name]
        assert len(split.patient_ids) == len(set(split.patient_ids)), f"{name}: a patient twice in one split"
        for i, code in enumerate(split.codes):
            members = [p for p, y in zip(split.patient_ids, split.labels.tolist()) if y == i]
            assert set(members) <= has[code], "every case has its class's condition"
            big += len(members) >= 8
    assert big >= 14, f"{big} SNOMED CT classes with 8 or more patients"
    # the findings are no disease classes, and say why
    excluded = {e["code"]: e for e in m["excluded"]}
    assert excluded["162864005"]["reason"].startswith("not_a_disorder") and not excluded["162864005"]["adaptation_only"]
    assert "162864005" not in {c for s in ts.splits.values() for c in s.codes}
    # features: the analytes of at least a fifth of the meta-train patients, LOINC by bare code
    names = m["features"]["record"]["names"]
    obs = synthea["observations"].dropna(subset=["value"])
    train = set(ts.splits["train"].patient_ids)
    share = obs[obs["patient_id"].isin(train)].groupby("code")["patient_id"].nunique() / len(train)
    assert {n[4:] for n in names if n.startswith("lab:")} == set(share[share >= 0.2].index)
    assert "lab:8480-6" in names and "lab:72166-2" not in names  # systolic BP yes; smoking status is categorical


def test_a_patient_is_one_case_per_split_under_the_rarest_policy_too(synthea_home):
    with pytest.raises(MedmetaError, match="three disjoint splits need"):  # the old rule: no class reaches 8
        plan_taskset(synthea_home, make_spec("disease", "records", label_policy="rarest"))


def test_synthetic_style_icd10_data_keeps_the_rarest_policy_and_bare_codes(tmp_path):
    rows, patients = [], []
    for i in range(60):
        pid = f"p{i:03d}"
        patients.append({"patient_id": pid, "sex": "female" if i % 2 else "male", "age_years": 40 + i % 30,
                         "site": "s", "source": "x"})
        rows.append({"patient_id": pid, "system": ICD10CM, "code": f"D{i % 10}.0", "display": None,
                     "onset_date": date(2020, 1, 1), "site": "s", "source": "x"})
        if i % 3 == 0:
            rows.append({**rows[-1], "code": "I10"})
    home = write_validated_home(tmp_path / "home", {"patients": pd.DataFrame(patients),
                                                    "conditions": pd.DataFrame(rows)})
    m = build_taskset(home, make_spec("disease", "records", ways=2, shots=2, queries=2))
    assert m["classes"]["system"]["uri"] == ICD10CM and m["label_policy"].startswith("rarest")
    codes = {c["code"] for s in m["splits"].values() for c in s["classes"]}
    assert codes == {f"D{k}.0" for k in range(10)}
    assert {e["code"]: e for e in m["excluded"]}["I10"]["reason"].startswith("never_the_label")


# -- concept maps ----------------------------------------------------------------------------------

def _group_rows(synthea) -> list[tuple[str, str, str, str]]:
    """Every SNOMED CT condition code into a local group: the four sinusitis codes into one."""
    codes = sorted(set(synthea["conditions"]["code"]))
    return [("sct" if k % 2 else SNOMED, code, GROUPS, "sinusitis" if code in SINUSITIS else f"G{code}") for k, code in
            enumerate(codes)]


def test_a_csv_concept_map_groups_snomed_codes_under_a_local_system(synthea, synthea_home, tmp_path):
    path = tmp_path / "groups.csv"
    path.write_text("source_system,source_code,target_system,target_code\n"
                    + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in _group_rows(synthea)))
    plan = plan_taskset(synthea_home, make_spec("disease", "records", system=GROUPS, concept_maps=[path]))
    assert plan.classes["system"]["uri"] == GROUPS
    assert plan.classes["concept_maps"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    union = set(synthea["conditions"].loc[synthea["conditions"]["code"].isin(SINUSITIS), "patient_id"])
    assert plan.counts["sinusitis"]["patients_with_condition"] == len(union) > 66
    split = next(s for s, codes in plan.splits.items() if "sinusitis" in codes)
    assert set(plan.rows[split].loc[plan.rows[split]["code"] == "sinusitis", "patient_id"]) <= union


def test_a_fhir_conceptmap_groups_with_wider_targets_and_counts_what_it_skips(synthea, synthea_home, tmp_path):
    elements = [{"code": code, "target": [{"code": "36971009", "display": "Sinusitis", "equivalence": "wider"},
                                          {"code": "0000", "equivalence": "narrower"}]}
                for code in SINUSITIS if code != "36971009"]
    resource = {"resourceType": "ConceptMap", "status": "active",
                "group": [{"source": SNOMED, "target": "urn:oid:2.16.840.1.113883.6.96", "element": elements}]}
    path = tmp_path / "sinusitis.json"
    path.write_text(json.dumps(resource, indent=2))
    loaded = load_concept_map(path)
    assert loaded.skipped == {"narrower": 3} and len(loaded.mappings) == 3
    plan = plan_taskset(synthea_home, make_spec("disease", "records", concept_maps=[path]))
    union = set(synthea["conditions"].loc[synthea["conditions"]["code"].isin(SINUSITIS), "patient_id"])
    assert plan.counts["36971009"]["patients_with_condition"] == len(union)
    assert not {"444814009", "40055000", "75498004"} & set(plan.counts)


BAD_CSV = {
    "unknown system": ("source_system,source_code,target_system,target_code\nsct,1,icd10cm,A00\nsnowmed,2,icd10cm,A01\n",
                       "line 3, source_system: unknown code system"),
    "malformed row": ("source_system,source_code,target_system,target_code\nsct,1,icd10cm\n", "line 2: 3 fields"),
    "empty code": ("source_system,source_code,target_system,target_code\nsct,,icd10cm,A00\n", "line 2: an empty source_code"),
    "conflict": ("source_system,source_code,target_system,target_code\nsct,1,icd10cm,A00\nsct,2,icd10cm,A00\n"
                 "http://snomed.info/sct,1,icd10cm,B00\n", "line 4: maps a source code that line 2 already maps"),
    "no header": ("sct,1,icd10cm,A00\n", "line 1: the header must be"),
}
BAD_FHIR = {
    "unknown system": ({"resourceType": "ConceptMap", "group": [{"source": "snomed ct", "target": ICD10CM, "element": []}]},
                       "line 4, group.source: unknown code system"),
    "no equivalence": ({"resourceType": "ConceptMap", "group": [{"source": SNOMED, "target": ICD10CM,
                                                                "element": [{"code": "1", "target": [{"code": "A00"}]}]}]},
                       "line 11: a target needs an equivalence"),
    "conflict": ({"resourceType": "ConceptMap", "group": [{"source": SNOMED, "target": ICD10CM, "element": [
        {"code": "1", "target": [{"code": "A00", "equivalence": "equivalent"}, {"code": "B00", "equivalence": "wider"}]}]}]},
                 "line 15: maps a source code that line 11 already maps"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_a_bad_csv_concept_map_is_refused_naming_file_and_line(case, tmp_path):
    text, message = BAD_CSV[case]
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(MedmetaError) as error:
        load_concept_map(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


@pytest.mark.parametrize("case", sorted(BAD_FHIR))
def test_a_bad_fhir_conceptmap_is_refused_naming_file_and_line(case, tmp_path):
    resource, message = BAD_FHIR[case]
    path = tmp_path / "map.json"
    path.write_text(json.dumps(resource, indent=2))
    with pytest.raises(MedmetaError) as error:
        load_concept_map(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_the_cli_refuses_a_bad_map_in_one_line_before_anything_runs(synthea_home, tmp_path):
    path = tmp_path / "map.csv"
    path.write_text(BAD_CSV["unknown system"][0])
    result = run_cli("tasks", "build", "--by", "disease", "--inputs", "records", "--concept-map", str(path),
                     "--home", str(synthea_home.root), "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and f"{path}, line 3" in result.stderr
    assert not (synthea_home.root / "tasksets" / "disease-records-3w5s3q-seed0").exists()


# -- outcome rules ---------------------------------------------------------------------------------

def _own_bp_outcome(tables, code: str) -> tuple[int, int]:
    """Responders / non-responders to ``code`` by the default antihypertensive rule, counted here."""
    e = tables["medication_exposures"]
    first = e[e["drug_code"] == code].sort_values("start_date").drop_duplicates("patient_id")
    o = tables["observations"]
    sbp = o[(o["code"] == "8480-6") & o["value"].notna()]
    yes = no = 0
    for row in first.itertuples():
        mine = sbp[sbp["patient_id"] == row.patient_id]
        mine = mine.assign(d=(pd.to_datetime(mine["effective_date"]) - pd.Timestamp(row.start_date)).dt.days)
        before = mine[(mine["d"] <= 0) & (mine["d"] >= -365)].sort_values("d")
        after = mine[(mine["d"] >= 90) & (mine["d"] <= 365)].sort_values("d")
        if len(before) and len(after):
            fall = before["value"].iloc[-1] - after["value"].iloc[0]
            yes, no = (yes + 1, no) if fall >= 10 else (yes, no + 1)
    return yes, no


def test_synthea_drug_outcomes_come_from_the_default_rules_and_are_reported_per_drug(synthea, synthea_home):
    with pytest.raises(NotEnoughClasses) as error:
        plan_taskset(synthea_home, make_spec("drug", shots=1, queries=1))
    report = error.value.report
    assert report["class_system"]["short"] == "rxnorm"
    hctz = report["outcomes"]["310798"]  # Hydrochlorothiazide 25 MG Oral Tablet
    assert (hctz["responders"], hctz["non_responders"]) == _own_bp_outcome(synthea, "310798")
    assert hctz["rules"] == ["antihypertensives"] and hctz["usable"] and set(hctz["unknown"]) <= {"no_baseline", "no_follow_up"}
    acetaminophen = report["outcomes"]["313782"]
    assert acetaminophen["unknown"] == {"no_rule": 47} and not acetaminophen["usable"]
    assert "no_known_outcome" in acetaminophen["why"]
    # the CLI prints the same report with --json, and one error line
    cli = run_cli("tasks", "build", "--by", "drug", "--shots", "1", "--queries", "1", "--home", str(synthea_home.root),
                  "--json")
    assert cli.returncode == 2 and cli.stderr.strip().startswith("error: only 2 drugs have enough cases")
    printed = json.loads(cli.stdout)
    assert printed["outcomes"]["310798"]["responders"] == hctz["responders"]


def _drug_home(tmp_path) -> tuple:
    """Three drugs, each given to 4 patients: HbA1c, LDL and systolic BP fall for two of them."""
    patients, exposures, observations = [], [], []
    drugs = [("860975", "24 HR Metformin hydrochloride 500 MG", "4548-4", "%", 8.0, 1.0),
             ("314231", "Simvastatin 10 MG Oral Tablet", "18262-6", "mg/dL", 160.0, 50.0),
             ("310798", "Hydrochlorothiazide 25 MG Oral Tablet", "8480-6", "mm[Hg]", 150.0, 20.0)]
    start = date(2015, 3, 1)
    for d, (code, display, analyte, unit, base, fall) in enumerate(drugs):
        for i in range(4):
            pid = f"p{d}{i}"
            patients.append({"patient_id": pid, "sex": "male", "age_years": 60, "site": "s", "source": "x"})
            exposures.append({"patient_id": pid, "drug_system": RXNORM, "drug_code": code, "drug_display": display,
                              "start_date": start, "outcome": "unknown", "site": "s", "source": "x"})
            for day, value in ((-30, base), (120, base - (fall if i < 2 else 0))):
                observations.append({"patient_id": pid, "system": LOINC, "code": analyte, "display": None,
                                     "value": value, "comparator": None, "censored": False, "value_system": None,
                                     "value_code": None, "unit": unit, "effective_date": start + timedelta(days=day),
                                     "site": "s", "source": "x"})
    tables = {"patients": pd.DataFrame(patients), "medication_exposures": pd.DataFrame(exposures),
              "observations": as_stored(pd.DataFrame(observations))}  # LDL in mg/dL is stored as 22748-8 in mmol/L
    return write_validated_home(tmp_path / "home", tables), tables


def test_a_drug_task_set_is_built_from_rules_with_responders_and_non_responders(tmp_path):
    home, _ = _drug_home(tmp_path)
    m = build_taskset(home, make_spec("drug", shots=1, queries=1, name="ruled"))
    assert m["classes"]["outcome_rules"]["rules"] == ["metformin", "statins", "antihypertensives"]
    assert all(o["responders"] == 2 and o["non_responders"] == 2 and o["usable"] for o in m["outcomes"].values())
    ts = load_taskset(home, "ruled")
    for split in ts.splits.values():
        for pid, label in zip(split.patient_ids, split.labels.tolist()):
            assert label == (pid[-1] in "01"), "patients 0 and 1 of each drug responded"


def test_a_user_rule_file_with_an_atc_class_and_a_concept_map(tmp_path):
    home, _ = _drug_home(tmp_path)
    rxnorm_to_atc = tmp_path / "atc.csv"
    rxnorm_to_atc.write_text("source_system,source_code,target_system,target_code\n"
                             "rxnorm,860975,atc,A10BA02\nrxnorm,314231,atc,C10AA01\nrxnorm,310798,atc,C03AA03\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n"
                     "  - name: biguanides\n    match: {atc: [A10BA]}\n    analytes: ['4548-4']\n    unit: '%'\n"
                     "    direction: decrease\n    at_least: 0.5\n"
                     "  - name: statins\n    match: {system: atc, codes: [C10AA01]}\n    analytes: ['18262-6']\n"
                     "    unit: mg/dL\n    direction: decrease\n    at_least: 20\n    relative: true\n"
                     "  - name: thiazides\n    match: {ingredients: [hydrochlorothiazide]}\n    analytes: ['8480-6']\n"
                     "    unit: mm[Hg]\n    direction: decrease\n    at_least: 10\n")
    m = build_taskset(home, make_spec("drug", shots=1, queries=1, concept_maps=[rxnorm_to_atc], outcomes=str(rules),
                                      name="atc"))
    assert m["classes"]["system"]["uri"] == ATC
    assert {c: o["rules"] for c, o in m["outcomes"].items()} == {"A10BA02": ["biguanides"], "C10AA01": ["statins"],
                                                                 "C03AA03": ["thiazides"]}
    assert m["classes"]["outcome_rules"]["sha256"] == hashlib.sha256(rules.read_bytes()).hexdigest()


RULE = ("rules:\n  - name: metformin\n    match: {ingredients: [metformin]}\n    analytes: ['4548-4']\n"
        "    unit: '%'\n    direction: decrease\n    at_least: 0.5\n")
BAD_RULES = {
    "unknown key": (RULE + "    at_most: 3\n", "rule metformin (line 2): unknown key(s) ['at_most']"),
    "missing analyte": (RULE.replace("    analytes: ['4548-4']\n", ""), "rule metformin (line 2): a rule needs analytes"),
    "bad window": (RULE + "    follow_up_days: [365, 90]\n", "rule metformin (line 2): follow_up_days must be"),
    "unknown system": (RULE + "    analyte_system: loinc-ish\n", "analyte_system: unknown code system"),
    "duplicate": (RULE + RULE.replace("rules:\n", ""), "line 8: a second rule named 'metformin' (first at line 2)"),
    "no match": (RULE.replace("    match: {ingredients: [metformin]}\n", ""), "rule metformin (line 2): a rule needs a match"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_a_bad_rule_file_is_refused_naming_file_rule_and_line(case, tmp_path):
    text, message = BAD_RULES[case]
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(MedmetaError) as error:
        load_rules(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_a_user_rule_that_matches_no_drug_is_refused_before_anything_is_written(tmp_path):
    home, _ = _drug_home(tmp_path)
    path = tmp_path / "rules.yaml"
    path.write_text(RULE + RULE.replace("rules:\n", "").replace("metformin", "metforminn"))
    with pytest.raises(MedmetaError, match=r"rules.yaml, line 8: rule 'metforminn' matches no drug in the snapshot"):
        build_taskset(home, make_spec("drug", shots=1, queries=1, outcomes=str(path)))
    assert not (home.root / "tasksets").exists() or not any((home.root / "tasksets").iterdir())


def test_the_default_rules_load():
    rules = load_rules()
    assert [r.name for r in rules.rules] == ["metformin", "statins", "antihypertensives"] and not rules.user
