"""Record parsers and pseudonymisation: site-mapped CSV/Parquet, FHIR, units, dates."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmeta.errors import MedmetaError, Rejected
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.canonical import Canonicalizer
from medmeta.records.fhir import parse_fhir_json, parse_fhir_ndjson
from medmeta.records.site_mappings import install_default_sites, load_site_mappings, parse_site
from medmeta.records.tabular import parse_tabular
from medmeta.records.units import default_units
from medmeta.ingest.consolidate import open_sealed
from medmeta.ingest.units_step import convert_units

KEY = b"unit-test-key-0123456789"


@pytest.fixture(scope="module")
def mappings(tmp_path_factory):
    sites = tmp_path_factory.mktemp("sites")
    install_default_sites(sites)
    return load_site_mappings(sites)


@pytest.fixture
def canon():
    return Canonicalizer(Pseudonymizer(KEY), date(2026, 1, 1), date(2026, 6, 1))


def converted(staged, canon) -> list[dict]:
    """The staged observations after consolidation's unit step (their sealed units opened first)."""
    frame = open_sealed(staged.tables["observations"].to_pandas(), "observations", canon.sealer)
    frame, rejects = convert_units(frame, default_units())
    assert rejects.empty
    return frame.to_dict("records")


def test_units_convert_to_the_canonical_unit():
    units = default_units()
    assert units.convert("http://loinc.org", "2345-7", 180.0, "mg/dl") == ("14749-6", pytest.approx(9.99, abs=0.01), "mmol/L")
    assert units.convert("http://loinc.org", "15074-8", 5.5, "mmol/L") == ("14749-6", 5.5, "mmol/L")
    code, celsius, unit = units.convert("http://loinc.org", "8310-5", 98.6, "[degF]")
    assert (code, unit) == ("8310-5", "Cel") and celsius == pytest.approx(37.0)
    with pytest.raises(Rejected) as err:
        units.convert("http://loinc.org", "2345-7", 1.0, "furlongs")
    assert err.value.code == "unknown_unit" and "furlongs" not in str(err.value)


def test_site_a_csv_is_mapped_pseudonymised_and_shifted(mappings, canon):
    csv = (
        "MRN,LAST_NAME,FIRST_NAME,DOB,GENDER,STREET_ADDRESS,CITY,PHONE\n"
        "A0000001,Zzyzx,Quentin,03/04/1970,F,1 Elm St,Springfield,555-0100\n"
        "A0000002,Doe,Jane,01/01/2099,M,2 Oak St,Shelbyville,555-0101\n"
    ).encode()
    raw = parse_tabular(csv, "csv", mappings)
    staged = canon(raw, "sha-x")
    patients = staged.tables["patients"].to_pylist()
    assert len(patients) == 1 and [e.code for e in staged.rejects] == ["future_birth_date"]
    assert patients[0]["patient_id"] == Pseudonymizer(KEY).patient_id("A0000001", "urn:medmeta:site-a:mrn")
    assert patients[0]["sex"] == "female" and patients[0]["age_years"] == 55
    assert "Zzyzx" not in json.dumps(patients) and staged.rejects[0].location == "row 3"


def test_site_a_wide_labs_become_long_canonical_observations(mappings, canon):
    csv = (
        "MRN,LAB_DATE,GLUCOSE_MG_DL,CREATININE_MG_DL,HGB_G_DL,LAB_NOTES\n"
        "A0000001,2024-02-03,90,1.0,13.5,Quentin Zzyzx feels fine\n"
        "A0000001,2024-02-10,abc,,14,\n"
    ).encode()
    staged = canon(parse_tabular(csv, "csv", mappings), "sha-y")
    rows = converted(staged, canon)
    assert {r["code"] for r in rows} == {"14749-6", "14682-9", "718-7"}
    assert all(r["unit"] in ("mmol/L", "umol/L", "g/dL") for r in rows)
    assert [e.code for e in staged.rejects] == ["non_numeric_value"]
    offset = Pseudonymizer(KEY).date_offset_days("A0000001", "urn:medmeta:site-a:mrn")
    assert rows[0]["effective_date"] == date(2024, 2, 3) + timedelta(days=offset)
    assert "Zzyzx" not in json.dumps(rows, default=str)


def test_birth_dates_older_than_120_years_are_refused_before_the_age_cap(mappings, canon):
    csv = ("MRN,DOB,GENDER\n" "A1,03/04/1870,F\n" "A2,03/04/1930,M\n").encode()
    staged = canon(parse_tabular(csv, "csv", mappings), "sha-old")
    assert [r["age_years"] for r in staged.tables["patients"].to_pylist()] == [90]
    assert [(e.code, e.location) for e in staged.rejects] == [("implausible_birth_date", "row 2")]


def test_site_c_parquet_long_format(mappings, canon):
    table = pa.table({
        "pid": ["C1", "C1"], "test_loinc": ["718-7", "8480-6"], "result": [135.0, 16.0],
        "result_unit": ["g/L", "kPa"], "taken_at": pa.array([1_700_000_000_000_000] * 2, pa.timestamp("us")),
        "comment": ["private", "private"],
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    staged = canon(parse_tabular(buf.getvalue(), "parquet", mappings), "sha-z")
    values = {r["code"]: (r["value"], r["unit"]) for r in converted(staged, canon)}
    assert values["718-7"] == (pytest.approx(13.5), "g/dL")
    assert values["8480-6"] == (pytest.approx(120.0, abs=0.1), "mm[Hg]")


def test_unknown_csv_layout_is_rejected(mappings):
    with pytest.raises(Rejected) as err:
        parse_tabular(b"foo,bar\n1,2\n", "csv", mappings)
    assert err.value.code == "unknown_site_layout"


def _bundle(*resources):
    return json.dumps({"resourceType": "Bundle", "type": "collection", "meta": {"source": "site_b"},
                       "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]}).encode()


PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"source": "site_b"}, "birthDate": "1980-05-06",
           "gender": "male", "name": [{"family": "Zzyzx"}],
           "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:x", "value": "B0000009"}]}


def _observation(value, subject="Patient/p1"):
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "valueQuantity": {"value": value, "code": "mg/dL"}, "effectiveDateTime": "2024-01-02T10:00:00Z",
            "note": [{"text": "Zzyzx"}]}


def test_fhir_bundle_rows_and_row_level_rejects(canon):
    data = _bundle(PATIENT, _observation(99.0), _observation("high"), {"resourceType": "Starship"},
                   {"resourceType": "Encounter"})
    raw = parse_fhir_json(data, site="site_b")
    staged = canon(raw, "sha-b")
    assert sorted(e.code for e in staged.rejects) == ["non_numeric_value", "unknown_resource_type"]
    assert raw.ignored == {"Encounter": 1}
    [row] = raw.rows["observations"]
    assert (row["mrn"], row["issuer"]) == ("B0000009", "urn:x"), "resolved within the file, with its issuer"
    obs = staged.tables["observations"].to_pylist()
    assert len(obs) == 1 and obs[0]["patient_id"] == Pseudonymizer(KEY).patient_id("B0000009", "urn:x")
    assert obs[0]["patient_ref"] is None


@pytest.mark.parametrize("payload, code", [
    (b"{not json", "malformed_json"),
    (b'{"hello": "world"}', "not_fhir"),
    (b'{"resourceType": "Starship"}', "unknown_resource_type"),
])
def test_fhir_file_level_rejects(payload, code):
    with pytest.raises(Rejected) as err:
        parse_fhir_json(payload, site="s")
    assert err.value.code == code


def test_ndjson_keeps_good_lines_and_rejects_the_bad_one(canon):
    lines = [json.dumps(_observation(90.0, "Patient/other")), "{broken", json.dumps(_observation(91.0, "Patient/other"))]
    staged = canon(parse_fhir_ndjson("\n".join(lines).encode(), site="s"), "sha-n")
    assert [(e.code, e.location) for e in staged.rejects] == [("malformed_json", "line 2")]
    rows = staged.tables["observations"].to_pylist()
    assert len(rows) == 2 and all(r["patient_id"] is None and r["patient_ref"] for r in rows)


def test_site_mapping_errors_are_refused_before_reading():
    with pytest.raises(MedmetaError, match="unknown key"):
        parse_site({"site": "s", "format": "csv", "tables": [{"table": "patients", "match": ["a"],
                    "columns": {"mrn": "a"}, "colour": 1}]}, "s.yaml")
    with pytest.raises(MedmetaError, match="has no field"):
        parse_site({"site": "s", "tables": [{"table": "patients", "match": ["a"],
                    "columns": {"mrn": "a", "shoe_size": "b"}}]}, "s.yaml")
