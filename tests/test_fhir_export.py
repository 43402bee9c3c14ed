"""FHIR R4 as exported: Synthea transaction bundles, a bulk NDJSON export, Epic-shaped resources.

The real exports come from ../shared/realdata (copied into tmp_path, never committed); the test
counts what they hold with its own plain-json code and compares with what the parser made of it.
Small hand-written resources pin each rule: status and verification exclusions, comparators,
code-system OIDs, reference forms, medication references, categorical values, bad lines, gzip.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zipfile
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from medmeta.errors import Rejected
from medmeta.ingest.config import IngestConfig
from medmeta.landing.sniff import sniff
from medmeta.landing.walk import discover, read_item
from medmeta.records.fhir import parse_fhir_json, parse_fhir_ndjson
from medmeta.terminology.systems import FHIR_BOOLEAN, ICD10CM, LOINC, NDC, RXNORM, SNOMED

REALDATA = Path(os.environ.get("MEDMETA_REALDATA") or Path(__file__).resolve().parents[1].parent / "shared" / "realdata")
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no real exports at {REALDATA} (set MEDMETA_REALDATA)")

PART_RULE = "Observation component:"  # rules counting parts of a resource that was read
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
EXCLUDED_OBSERVATION = {"cancelled", "entered-in-error"}


# ---------------------------------------------------------------------------------------------
# Independent counting: plain json, nothing from medmeta


def _count_input(resources: list[dict]) -> dict:
    """What a file holds, by the test's own reading of FHIR R4."""
    counts = Counter(r["resourceType"] for r in resources)
    conditions = sum(1 for r in resources if r["resourceType"] == "Condition" and not (
        {c.get("code") for c in (r.get("verificationStatus") or {}).get("coding", [])} & EXCLUDED_VERIFICATION))
    numeric = 0
    for r in resources:
        if r["resourceType"] != "Observation" or r.get("status") in EXCLUDED_OBSERVATION:
            continue
        for element in [r, *r.get("component", [])]:
            value = (element.get("valueQuantity") or {}).get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric += 1
    return {"types": counts, "conditions": conditions, "numeric_observations": numeric,
            "medication_requests": counts["MedicationRequest"]}


def _accounted(records) -> int:
    """Resources the parser put somewhere: read, ignored, excluded by a resource rule, or rejected."""
    excluded = sum(n for rule, n in records.excluded.items() if not rule.startswith(PART_RULE))
    return sum(records.read.values()) + sum(records.ignored.values()) + excluded + len(records.rejects)


def _resources_rows(records, table: str) -> int:
    """Distinct resources that gave rows to ``table`` (a Condition gives one row per code system)."""
    return len({row["location"] for row in records.rows.get(table, [])})


def _copy_and_unzip(name: str, tmp_path: Path) -> Path:
    archive = tmp_path / name
    shutil.copy(REALDATA / name, archive)
    out = tmp_path / Path(name).stem
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(out)
    return out


# ---------------------------------------------------------------------------------------------
# Real exports


@needs_realdata
def test_synthea_transaction_bundles(tmp_path):
    folder = _copy_and_unzip("synthea_r4_transaction_bundles_100p.zip", tmp_path)
    expected, got = Counter(), Counter()
    total = accounted = 0
    for path in sorted(folder.rglob("*.json")):
        data = path.read_bytes()
        doc = json.loads(data)
        resources = [e["resource"] for e in doc.get("entry", [])] if doc["resourceType"] == "Bundle" else [doc]
        want = _count_input(resources)
        records = parse_fhir_json(data, site="synthea")
        total += len(resources)
        accounted += _accounted(records)
        expected.update(conditions=want["conditions"], numeric=want["numeric_observations"],
                        medication_requests=want["medication_requests"])
        got.update(conditions=_resources_rows(records, "conditions"),
                   numeric=sum(1 for row in records.rows.get("observations", []) if row["value"] is not None),
                   medication_rows=len(records.rows.get("medication_exposures", [])),
                   rxnorm=sum(1 for row in records.rows.get("medication_exposures", []) if row["drug_system"] == RXNORM))
        for table, rows in records.rows.items():
            if table != "patients":  # every subject of a patient's bundle resolves within it
                assert all("mrn" in row and "ref" not in row for row in rows), path.name
    assert total == accounted == 38_971
    assert expected["conditions"] == 639 and got["conditions"] >= 0.99 * expected["conditions"]
    assert expected["medication_requests"] == 2386
    assert got["medication_rows"] == got["rxnorm"] == expected["medication_requests"]
    assert expected["numeric"] == 14_251 + 2 * 985 and got["numeric"] >= 0.98 * expected["numeric"]


@needs_realdata
def test_synthea_bulk_ndjson_export(tmp_path):
    folder = _copy_and_unzip("synthea_bulk_ndjson_10p.zip", tmp_path)
    files = sorted(folder.rglob("*.ndjson"))
    log = [p for p in files if p.name == "log.ndjson"]
    assert len(log) == 1 and sniff(log[0].read_bytes(), "log.ndjson") == "fhir_export_log"
    parsed = {}
    for path in files:
        if path.name == "log.ndjson":
            continue
        data = path.read_bytes()
        assert sniff(data, path.name) == "ndjson"
        resources = [json.loads(line) for line in data.splitlines() if line.strip()]
        want = _count_input(resources)
        assert len(want["types"]) == 1, "a bulk export has one resource type per file"
        records = parse_fhir_ndjson(data, site="bulk")
        assert _accounted(records) == len(resources) and not records.rejects, path.name
        assert _resources_rows(records, "conditions") >= 0.99 * want["conditions"]
        assert len(records.rows.get("medication_exposures", [])) == want["medication_requests"]
        parsed[path.name.split(".")[0]] = records
    patients = parsed["Patient"].patient_refs
    assert len(patients) == 13
    for kind in ("Condition", "MedicationRequest"):
        rows = next(iter(parsed[kind].rows.values()))
        assert rows and all(row["ref"] in patients for row in rows), f"{kind} rows name Patients of the export"
    assert all(row["drug_system"] == RXNORM for row in parsed["MedicationRequest"].rows["medication_exposures"])


@needs_realdata
def test_bulk_export_read_gzipped_through_the_landing(tmp_path):
    folder = _copy_and_unzip("synthea_bulk_ndjson_10p.zip", tmp_path)
    plain = next(folder.rglob("Condition.000.ndjson"))
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "Condition.000.ndjson.gz").write_bytes(gzip.compress(plain.read_bytes()))
    config = IngestConfig()
    [item] = discover(landing, config)
    data = read_item(item, config)
    assert data == plain.read_bytes() and sniff(data, item.logical_path) == "ndjson"
    assert parse_fhir_ndjson(data, "bulk").rows == parse_fhir_ndjson(plain.read_bytes(), "bulk").rows


@needs_realdata
def test_epic_like_export(tmp_path):
    folder = tmp_path / "epic"
    shutil.copytree(REALDATA / "epic_like", folder)
    parsed = {p.stem: parse_fhir_ndjson(p.read_bytes(), site="epic") for p in sorted(folder.glob("*.ndjson"))}
    for name, records in parsed.items():
        lines = [line for line in (folder / f"{name}.ndjson").read_bytes().splitlines() if line.strip()]
        assert _accounted(records) == len(lines) and not records.rejects, name

    patient = json.loads((folder / "Patient.ndjson").read_text())
    identifiers = patient["identifier"]
    # No identifier of this Patient is typed MR or by text "MRN": the first with a value is its MRN.
    assert not any((i.get("type") or {}).get("text") == "MRN" for i in identifiers)
    [row] = parsed["Patient"].rows["patients"]
    assert (row["mrn"], row["issuer"]) == (identifiers[0]["value"], identifiers[0]["system"])
    assert row["sex"] == "female" and row["birth_date"] == date.fromisoformat(patient["birthDate"])

    # The same Patient with its MRN typed by text only, Epic style, last in the list.
    mrn = {"use": "usual", "type": {"text": "MRN"}, "system": "urn:oid:1.2.840.114350.1.13.20.3.7.5.737384.14",
           "value": "E1234567"}
    patient["identifier"] = identifiers + [mrn]
    [row] = parse_fhir_ndjson(json.dumps(patient).encode(), "epic").rows["patients"]
    assert (row["mrn"], row["issuer"]) == ("E1234567", mrn["system"])

    # The MedicationRequest gives one row; its Medication (another file) is in ``medications``.
    [exposure] = parsed["MedicationRequest"].rows["medication_exposures"]
    assert exposure["ref"] == f"Patient/{patient['id']}" and exposure["drug_system"] == NDC
    assert parsed["Medication"].medications == {"Medication/med0301": (NDC, "0069-2587-10", exposure["drug_display"])}
    request = json.loads((folder / "MedicationRequest.ndjson").read_text())
    del request["medicationCodeableConcept"], request["contained"]
    request["medicationReference"] = {"reference": "Medication/med0301"}
    [exposure] = parse_fhir_ndjson(json.dumps(request).encode(), "epic").rows["medication_exposures"]
    assert exposure["medication_ref"] in parsed["Medication"].medications and "drug_code" not in exposure

    [observation] = parsed["Observation"].rows["observations"]
    assert observation["value"] is None and observation["value_code"] and observation["system"] == LOINC
    [condition] = parsed["Condition"].rows["conditions"]
    assert (condition["system"], condition["onset_date"]) == (SNOMED, date(2013, 4, 2))


# ---------------------------------------------------------------------------------------------
# Hand-written resources, one rule each

PATIENT = {"resourceType": "Patient", "id": "123", "meta": {"source": "#request-9f1c"}, "birthDate": "1970-05",
           "gender": "male", "name": [{"family": "Zzyzx"}],
           "identifier": [{"system": "urn:ssn", "value": "999-00-1111"},
                          {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                "code": "MR"}]},
                           "system": "https://hospital.example/mrn", "value": "M42"}]}
SUBJECT = {"reference": "Patient/123"}


def _condition(**extra) -> dict:
    base = {"resourceType": "Condition", "subject": SUBJECT, "onsetDateTime": "2020-02-03T10:00:00+01:00",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}],
                     "text": "Zzyzx's sugar"}}
    return {**base, **extra}


def _observation(**extra) -> dict:
    base = {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "effectiveDateTime": "2021-03-04",
            "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.1", "code": "2345-7", "display": "Glucose"}]}}
    return {**base, **extra}


def _bundle(*resources, full_urls=None) -> bytes:
    urls = full_urls or [None] * len(resources)
    entries = [{"resource": r, **({"fullUrl": u} if u else {})} for r, u in zip(resources, urls)]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def _ndjson(*resources) -> bytes:
    return "\n".join(json.dumps(r) for r in resources).encode()


def test_patient_mrn_issuer_and_site():
    records = parse_fhir_json(_bundle(PATIENT, _condition()), site="hospital-a")
    [patient] = records.rows["patients"]
    assert (patient["mrn"], patient["issuer"]) == ("M42", "https://hospital.example/mrn")
    assert patient["birth_date"] == date(1970, 5, 1) and "Zzyzx" not in repr(records.rows)
    assert records.site == "hospital-a", "meta.source never names the site"
    [condition] = records.rows["conditions"]
    assert (condition["mrn"], condition["issuer"]) == ("M42", "https://hospital.example/mrn")
    assert records.patient_refs == {"Patient/123": ("M42", "https://hospital.example/mrn")}


def test_patient_issuer_from_the_assigner_and_the_fallback_mrn():
    by_assigner = {"resourceType": "Patient", "id": "a",
                   "identifier": [{"type": {"text": "mrn"}, "value": "7", "assigner": {"display": "St Elsewhere"}}]}
    no_identifier = {"resourceType": "Patient", "id": "b"}
    rows = parse_fhir_ndjson(_ndjson(by_assigner, no_identifier), "s").rows["patients"]
    assert [(r["mrn"], r["issuer"]) for r in rows] == [("7", "St Elsewhere"), ("s:Patient/b", None)]


def test_subject_by_identifier_and_reference_forms():
    records = parse_fhir_ndjson(_ndjson(
        _condition(subject={"identifier": {"system": "https://hospital.example/mrn", "value": "M42"}}),
        _condition(subject={"reference": "https://fhir.example/r4/Patient/123/_history/4"}),
        _condition(subject={"reference": "Patient/123/_history/1"}),
        _condition(subject={"reference": "urn:uuid:5b7f7d3c-0d4e-4f43-9a39-3f1a3d8a2a10"}),
        _condition(subject={"reference": "Group/9"}),
    ), "s")
    rows = records.rows["conditions"]
    assert (rows[0]["mrn"], rows[0]["issuer"]) == ("M42", "https://hospital.example/mrn")
    assert [r.get("ref") for r in rows[1:]] == ["Patient/123", "Patient/123",
                                                "urn:uuid:5b7f7d3c-0d4e-4f43-9a39-3f1a3d8a2a10"]
    assert [(e.code, e.location) for e in records.rejects] == [("invalid_record", "line 5")]
    # The Patient of another file of the export registers the same normalised reference.
    other_file = parse_fhir_ndjson(_ndjson(PATIENT), "s")
    assert set(r["ref"] for r in rows[1:3]) <= set(other_file.patient_refs)


def test_urn_uuid_references_resolve_through_full_urls():
    patient_url = "urn:uuid:0e6f2b43-8c0a-4f0c-9d2e-3c1a5f1e9b21"
    data = _bundle(_condition(subject={"reference": patient_url}), PATIENT, full_urls=[None, patient_url])
    [row] = parse_fhir_json(data, "s").rows["conditions"]
    assert row["mrn"] == "M42"


def test_condition_rules():
    records = parse_fhir_ndjson(_ndjson(
        _condition(verificationStatus={"coding": [{"code": "refuted"}]}),
        _condition(verificationStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                   "code": "entered-in-error"}]}),
        _condition(code={"coding": [{"system": "urn:oid:2.16.840.1.113883.6.90", "code": "E11.9", "display": "T2DM"},
                                    {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11"},
                                    {"system": "http://snomed.info/sct", "code": "44054006"}],
                           "text": "free text never stored"},
                   onsetDateTime=None, onsetPeriod={"start": "2019"}),
        _condition(code={"text": "text only"}),
        _condition(onsetDateTime=None, recordedDate="2018-07-08"),
    ), "s")
    assert records.excluded == {"Condition: verificationStatus refuted": 1,
                                "Condition: verificationStatus entered-in-error": 1}
    rows = records.rows["conditions"]
    assert [(r["system"], r["code"], r["display"], r["onset_date"]) for r in rows] == [
        (ICD10CM, "E11.9", "T2DM", date(2019, 1, 1)),
        (SNOMED, "44054006", None, date(2019, 1, 1)),
        (SNOMED, "44054006", "Diabetes", date(2018, 7, 8)),
    ]
    assert [(e.code, e.location) for e in records.rejects] == [("invalid_record", "line 4")]
    assert records.read == {"Condition": 2} and _accounted(records) == 5


def test_observation_status_comparator_and_value_rules():
    quantity = {"value": 0.5, "comparator": "<", "unit": "mmol/l", "system": "http://unitsofmeasure.org",
                "code": "mmol/L"}
    records = parse_fhir_ndjson(_ndjson(
        _observation(status="cancelled", valueQuantity={"value": 1}),
        _observation(status="entered-in-error", valueQuantity={"value": 1}),
        _observation(valueQuantity=quantity),
        _observation(valueQuantity={"value": 3, "comparator": "ad", "unit": "mg"}),
        _observation(valueQuantity={"value": 7, "unit": "mg/dL"}),
        _observation(valueCodeableConcept={"coding": [{"system": "urn:oid:2.16.840.1.113883.6.96", "code": "260385009",
                                                       "display": "Negative"}], "text": "neg"}),
        _observation(valueBoolean=False),
        _observation(valueInteger=4),
        _observation(valueString="Zzyzx feels fine"),
        _observation(valueSampledData={"origin": {"value": 0}, "period": 1, "dimensions": 1, "data": "1 2"}),
        _observation(dataAbsentReason={"coding": [{"code": "unknown"}]}),
        _observation(valueQuantity={"value": True}),
        _observation(valueQuantity={"value": "high"}),
    ) + b"\n" + b'{"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/1"}, '
                b'"code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]}, "valueQuantity": {"value": NaN}}', "s")
    assert records.excluded == {"Observation: status cancelled": 1, "Observation: status entered-in-error": 1,
                                "Observation: comparator ad": 1, "Observation: valueString": 1,
                                "Observation: valueSampledData": 1, "Observation: no value": 1}
    rows = records.rows["observations"]
    assert all(r["system"] == LOINC and r["code"] == "2345-7" for r in rows)
    assert [(r["value"], r["unit"], r["comparator"]) for r in rows[:2]] == [(0.5, "mmol/L", "<"), (7.0, "mg/dL", None)]
    assert [(r["value"], r["value_system"], r["value_code"]) for r in rows[2:]] == [
        (None, SNOMED, "260385009"), (None, FHIR_BOOLEAN, "false"), (4.0, None, None)]
    assert [(e.code, e.location) for e in records.rejects] == [
        ("non_numeric_value", "line 12"), ("non_numeric_value", "line 13"), ("not_finite", "line 14")]
    assert "Zzyzx" not in repr(records.rows) and _accounted(records) == 14


def test_blood_pressure_components_are_observations_and_the_panel_is_read():
    def component(code, value):
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mm[Hg]", "code": "mm[Hg]"}}

    panel = _observation(code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                         component=[component("8480-6", 120), component("8462-4", 80),
                                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8478-0"}]},
                                     "dataAbsentReason": {"coding": [{"code": "not-performed"}]}}])
    records = parse_fhir_ndjson(_ndjson(panel), "s")
    assert [(r["code"], r["value"], r["effective_date"]) for r in records.rows["observations"]] == [
        ("8480-6", 120.0, date(2021, 3, 4)), ("8462-4", 80.0, date(2021, 3, 4))]
    assert records.read == {"Observation": 1}
    assert records.excluded == {"Observation component: no value": 1} and _accounted(records) == 1


def test_medication_references_resolve_contained_in_file_and_across_files():
    rxnorm = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975",
                          "display": "metformin"}]}
    medication = {"resourceType": "Medication", "id": "m1",
                  "code": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0002-1"}, *rxnorm["coding"]]}}
    med_url = "urn:uuid:9d1c2f6e-4b4a-4c39-8a8e-2f0d6b3c1a77"
    request = {"resourceType": "MedicationRequest", "status": "active", "subject": SUBJECT, "authoredOn": "2022-01-02"}
    records = parse_fhir_json(_bundle(
        PATIENT,
        {**request, "medicationReference": {"reference": med_url}},
        {**request, "medicationReference": {"reference": "Medication/m1/_history/2"}},
        {**request, "contained": [{"resourceType": "Medication", "id": "c", "code": rxnorm}],
         "medicationReference": {"reference": "#c"}},
        {**request, "medicationReference": {"reference": "https://fhir.example/Medication/elsewhere"}},
        {**request, "status": "entered-in-error", "medicationCodeableConcept": rxnorm},
        {"resourceType": "MedicationStatement", "status": "active", "subject": SUBJECT, "medicationCodeableConcept": rxnorm,
         "effectivePeriod": {"start": "2022-03-01"},
         "extension": [{"url": "https://medmeta.dev/fhir/StructureDefinition/treatment-response",
                        "valueCode": "response"}]},
        {"resourceType": "MedicationAdministration", "status": "completed", "subject": SUBJECT,
         "medicationCodeableConcept": rxnorm, "effectiveDateTime": "2022-04-05T08:00:00Z"},
        medication,
        full_urls=[None, None, None, None, None, None, None, None, med_url]), "s")
    rows = records.rows["medication_exposures"]
    assert [r.get("drug_code") for r in rows] == ["860975", "860975", "860975", None, "860975", "860975"]
    assert all(r.get("drug_system", RXNORM) == RXNORM for r in rows)
    assert rows[3]["medication_ref"] == "Medication/elsewhere"
    assert [r["start_date"] for r in rows] == [date(2022, 1, 2)] * 4 + [date(2022, 3, 1), date(2022, 4, 5)]
    assert [r["outcome"] for r in rows] == ["unknown"] * 4 + ["response", "unknown"]
    assert records.medications == {"Medication/m1": (RXNORM, "860975", "metformin"),
                                   med_url: (RXNORM, "860975", "metformin")}
    assert records.excluded == {"MedicationRequest: status entered-in-error": 1}
    assert records.read == {"Patient": 1, "Medication": 1, "MedicationRequest": 4, "MedicationStatement": 1,
                            "MedicationAdministration": 1}
    assert _accounted(records) == 9


def test_a_bad_line_never_loses_the_rest_of_the_file():
    lines = [json.dumps(_condition()), '{"resourceType": "Condition", "subject": ', json.dumps({"hello": 1}),
             json.dumps({"resourceType": "Starship"}), "", json.dumps({"resourceType": "Encounter"}),
             json.dumps(_condition())]
    records = parse_fhir_ndjson("\n".join(lines).encode(), "s")
    assert [(e.code, e.location) for e in records.rejects] == [
        ("malformed_json", "line 2"), ("not_fhir", "line 3"), ("unknown_resource_type", "line 4")]
    assert len(records.rows["conditions"]) == 2 and records.ignored == {"Encounter": 1}
    assert all("Zzyzx" not in e.message for e in records.rejects)


def test_gzip_bomb_and_damaged_gzip_are_refused_with_a_reason(tmp_path):
    config = IngestConfig(max_zip_entry_bytes=1024 * 1024)
    (tmp_path / "bomb.ndjson.gz").write_bytes(gzip.compress(b" " * (64 * 1024 * 1024)))  # 64 MiB from ~64 KiB
    (tmp_path / "cut.ndjson.gz").write_bytes(gzip.compress(_ndjson(_condition()) * 50)[:-12])
    (tmp_path / "two.ndjson.gz").write_bytes(gzip.compress(_ndjson(_condition())) + gzip.compress(b"\n" + _ndjson(_condition())))
    items = {item.logical_path: item for item in discover(tmp_path, config)}
    with pytest.raises(Rejected) as bomb:
        read_item(items["bomb.ndjson.gz"], config)
    assert bomb.value.code == "gzip_too_large"
    with pytest.raises(Rejected) as cut:
        read_item(items["cut.ndjson.gz"], config)
    assert cut.value.code == "bad_archive"
    records = parse_fhir_ndjson(read_item(items["two.ndjson.gz"], config), "s")
    assert len(records.rows["conditions"]) == 2, "every member of a multi-member gzip file is read"


def test_sniff_knows_the_export_log_gzip_names_and_fhir_xml():
    log = b'{"exportId": "e1", "timestamp": "2024-08-06T14:11:57Z", "eventId": "kickoff", "eventDetail": {}}\n'
    assert sniff(log, "log.ndjson") == "fhir_export_log"
    assert sniff(b'{"resourceType": "Patient", "id": "1"}\n', "Patient.000.ndjson.gz") == "ndjson"
    xml = b'<?xml version="1.0" encoding="UTF-8"?>\n<Patient xmlns="http://hl7.org/fhir">\n  <id value="1"/>\n</Patient>\n'
    with pytest.raises(Rejected) as caught:
        sniff(xml, "patient.xml")
    assert caught.value.code == "fhir_xml_unsupported"
    with pytest.raises(Rejected) as other:
        sniff(b"<html><body>hi</body></html>", "page.xml")
    assert other.value.code == "unsupported_file_type"
