"""OMOP CDM 5.4 input: tables recognised from their headers, rows to RawRecords, concepts resolved.

Measured on the OHDSI Eunomia Synthea27Nj CDM 5.4 export (../shared/realdata), copied into a
temporary folder; the expected counts come from this file's own csv-module code, never medmeta's.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import zipfile
from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmeta.errors import INVALID_RECORD, NON_NUMERIC_VALUE, Rejected
from medmeta.landing.sniff import sniff
from medmeta.records.omop import READ_COLUMNS
from medmeta.records.omop_tables import CDM54_TABLES, recognise_cdm_table
from medmeta.records.omop_concepts import CONCEPT_SCHEMA, concept_table, resolve_omop_concepts
from medmeta.records.site_mappings import load_site_mappings
from medmeta.records.tabular import parse_tabular
from medmeta.terminology.systems import LOINC, OMOP_CONCEPT, RXNORM, SNOMED, UCUM

REALDATA = Path(os.environ.get("MEDMETA_REALDATA") or Path(__file__).resolve().parents[1].parent / "shared" / "realdata")
EXPORT = REALDATA / "omop_cdm54_synthea27nj.zip"
SITE = "nj"
CLINICAL = ("condition_occurrence", "drug_exposure", "measurement", "observation")

needs_export = pytest.mark.skipif(not EXPORT.exists(), reason=f"the OMOP CDM export is not in {REALDATA}")


# ---------------------------------------------------------------------------------------------
# The export, read by this test's own code


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict[str, bytes]:
    """Every entry of a copy of the export: name in the zip -> bytes."""
    copy = tmp_path_factory.mktemp("omop") / EXPORT.name
    shutil.copyfile(EXPORT, copy)
    with zipfile.ZipFile(copy) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


@pytest.fixture(scope="module")
def cdm_files(export) -> dict[str, bytes]:
    """The CDM tables: lower-case table name -> bytes (the __MACOSX entries left out)."""
    return {Path(name).stem.lower(): data for name, data in export.items() if not name.startswith("__MACOSX/")}


@pytest.fixture(scope="module")
def parsed(cdm_files) -> dict:
    return {table: parse_tabular(data, "csv", [], site=SITE) for table, data in cdm_files.items()}


def rows_of(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def write_rows(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def vocabulary(cdm_files) -> dict[str, dict]:
    """concept_id (text) -> its CONCEPT row."""
    return {row["concept_id"]: row for row in rows_of(cdm_files["concept"])}


# ---------------------------------------------------------------------------------------------
# Recognition


def test_every_cdm_table_is_recognised_from_its_own_columns():
    for table in CDM54_TABLES.values():
        assert recognise_cdm_table(sorted(table.columns)) == table.name
        assert recognise_cdm_table([c.upper() for c in table.required] + ["EXTRA_COLUMN"]) == table.name
    assert recognise_cdm_table(["person_id", "gender_concept_id"]) is None  # required columns missing


def test_shipped_site_layouts_are_not_omop(tmp_path):
    from medmeta.records.site_mappings import install_default_sites

    install_default_sites(tmp_path)
    for mapping in load_site_mappings(tmp_path):
        assert recognise_cdm_table(mapping.match) is None


@needs_export
def test_every_file_of_the_export_is_recognised_and_accounted_for(cdm_files, parsed):
    assert len(cdm_files) == 39
    for table, data in cdm_files.items():
        assert sniff(data, f"{table}.csv") == "csv"
        header = next(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        assert recognise_cdm_table(header) == table
        records, rows = parsed[table], len(rows_of(data))
        label = f"OMOP {table}"
        accounted = (records.read[label] + records.ignored[label] + sum(records.excluded.values())
                     + len(records.rejects))
        assert accounted == rows, table
        if table not in READ_COLUMNS and table != "concept":
            assert label in records.ignored and not records.rows and not records.concepts, table


@needs_export
def test_the_apple_double_entry_is_not_read_as_a_csv(export):
    entries = [name for name in export if name.startswith("__MACOSX/")]
    assert entries == ["__MACOSX/._CARE_SITE.csv"]
    data = export[entries[0]]
    assert data[:4] == b"\x00\x05\x16\x07"  # AppleDouble magic (RFC 1740)
    with pytest.raises(Rejected) as err:  # quarantined with its own reason, never parsed as a table
        sniff(data, entries[0])
    assert err.value.code == "macos_metadata"


# ---------------------------------------------------------------------------------------------
# Rows


@needs_export
def test_every_person_is_a_patient(cdm_files, parsed):
    persons = rows_of(cdm_files["person"])
    patients = parsed["person"].rows["patients"]
    assert len(patients) == len(persons) == 28
    by_mrn = {p["mrn"]: p for p in patients}
    sexes = {"8507": "male", "8532": "female"}
    for person in persons:
        patient = by_mrn[person["person_id"]]
        assert patient["issuer"] == f"omop:{SITE}"
        assert patient["birth_date"] == date.fromisoformat(person["birth_datetime"][:10])
        assert patient["sex"] == sexes[person["gender_concept_id"]]
    assert not parsed["person"].rejects


@needs_export
def test_every_clinical_row_is_a_row_an_exclusion_or_a_reject(cdm_files, parsed):
    canonical = {"condition_occurrence": "conditions", "drug_exposure": "medication_exposures",
                 "measurement": "observations", "observation": "observations"}
    for table in CLINICAL:
        source = rows_of(cdm_files[table])
        records = parsed[table]
        kept = records.rows.get(canonical[table], [])
        locations = [r["location"] for r in kept] + [e.location for e in records.rejects]
        assert len(locations) == len(set(locations))
        assert len(kept) + len(records.rejects) + sum(records.excluded.values()) == len(source), table
        assert {r["mrn"] for r in kept} <= {p["person_id"] for p in rows_of(cdm_files["person"])}
    assert len(parsed["condition_occurrence"].rows["conditions"]) == 470
    assert len(parsed["drug_exposure"].rows["medication_exposures"]) == 883


@needs_export
def test_measurements_keep_their_number_and_unit_and_valueless_rows_are_excluded(cdm_files, parsed):
    source = rows_of(cdm_files["measurement"])
    numeric = [r for r in source if r["value_as_number"]]
    kept = parsed["measurement"].rows["observations"]
    assert len(kept) == len(numeric) == 9107
    for row, fact in zip(numeric, kept):
        assert fact["code"] == row["measurement_concept_id"] and fact["system"] == OMOP_CONCEPT
        assert fact["value"] == float(row["value_as_number"])
        assert fact["unit"] == (row["unit_source_value"] or f"omop-concept:{row['unit_concept_id']}")
        assert fact["effective_date"] == date.fromisoformat(row["measurement_date"])
        assert fact["comparator"] is None
    source_text = sum(1 for r in source if not r["value_as_number"] and r["value_source_value"])
    assert parsed["measurement"].excluded == Counter({
        "OMOP measurement: no value": len(source) - len(numeric) - source_text,
        "OMOP measurement: value only as source text (value_source_value)": source_text,
    })
    # Every OBSERVATION row of this export carries no value at all.
    assert parsed["observation"].excluded == Counter({"OMOP observation: no value": 8099})


@needs_export
def test_observation_values_free_text_excluded_concepts_categorical(cdm_files):
    rows = rows_of(cdm_files["observation"])[:3]
    rows[0]["value_as_string"] = "PLANTED FREE TEXT"
    rows[1]["value_as_concept_id"] = "4181412"
    rows[2]["value_as_number"], rows[2]["unit_source_value"] = "12.5", "kg"
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    assert records.excluded == Counter({"OMOP observation: value only as free text (value_as_string)": 1})
    categorical, numeric = records.rows["observations"]
    assert (categorical["value"], categorical["value_system"], categorical["value_code"]) == (None, OMOP_CONCEPT, "4181412")
    assert (numeric["value"], numeric["unit"]) == (12.5, "kg")
    assert "PLANTED" not in repr(records)


@needs_export
def test_operator_concepts_become_comparators(cdm_files):
    rows = rows_of(cdm_files["measurement"])
    rows = [r for r in rows if r["value_as_number"]][:6]
    operators = ["4171756", "4171754", "4172703", "4171755", "4172704", "4181412"]
    for row, operator in zip(rows, operators):
        row["operator_concept_id"] = operator
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    assert [f["comparator"] for f in records.rows["observations"]] == ["<", "<=", None, ">=", ">"]
    [reject] = records.rejects
    assert (reject.code, reject.location) == (INVALID_RECORD, "row 7")


@needs_export
def test_a_concept_id_of_zero_falls_back_to_the_source_concept_then_the_source_value(cdm_files):
    rows = rows_of(cdm_files["condition_occurrence"])[:3]
    rows[0]["condition_concept_id"] = "0"
    rows[1]["condition_concept_id"] = rows[1]["condition_source_concept_id"] = "0"
    rows[2]["condition_concept_id"] = rows[2]["condition_source_concept_id"] = "0"
    rows[2]["condition_source_value"] = ""
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    first, second = records.rows["conditions"]
    assert (first["system"], first["code"]) == (OMOP_CONCEPT, rows[0]["condition_source_concept_id"])
    assert (second["system"], second["code"]) == ("urn:medmeta:omop-source-value:condition_occurrence",
                                                  rows[1]["condition_source_value"])
    [reject] = records.rejects
    assert (reject.code, reject.location) == (INVALID_RECORD, "row 4")


@needs_export
def test_birth_from_year_month_day_when_birth_datetime_is_blank(cdm_files):
    rows = rows_of(cdm_files["person"])[:2]
    rows[0]["birth_datetime"] = ""
    rows[1]["birth_datetime"], rows[1]["month_of_birth"], rows[1]["day_of_birth"] = "", "", ""
    rows[1]["gender_concept_id"], rows[1]["gender_source_value"] = "0", "F"
    first, second = parse_tabular(write_rows(rows), "csv", [], site=SITE).rows["patients"]
    assert first["birth_date"] == date(int(rows[0]["year_of_birth"]), int(rows[0]["month_of_birth"]),
                                       int(rows[0]["day_of_birth"]))
    assert second["birth_date"] == date(int(rows[1]["year_of_birth"]), 1, 1)
    assert second["sex"] == "female"


@needs_export
def test_malformed_rows_are_rejected_with_their_row_and_the_rest_goes_on(cdm_files):
    rows = rows_of(cdm_files["condition_occurrence"])
    rows[3]["condition_start_date"] = "2019-13-45"  # row 5 (the header is row 1)
    rows[5]["person_id"] = "PLANTED-ID"  # row 7
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    assert {(e.location, e.code) for e in records.rejects} == {("row 5", INVALID_RECORD), ("row 7", INVALID_RECORD)}
    assert len(records.rows["conditions"]) == len(rows) - 2
    assert all("PLANTED" not in e.reason and "2019-13" not in e.reason for e in records.rejects)

    rows = rows_of(cdm_files["measurement"])[:4]
    rows[1]["value_as_number"] = "PLANTED"
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    [reject] = records.rejects
    assert (reject.code, reject.location) == (NON_NUMERIC_VALUE, "row 3")
    assert "PLANTED" not in reject.reason


@needs_export
def test_a_parquet_table_with_upper_case_columns_is_recognised(cdm_files, tmp_path):
    persons = rows_of(cdm_files["person"])
    table = pa.table({
        "PERSON_ID": [int(p["person_id"]) for p in persons],
        "GENDER_CONCEPT_ID": [int(p["gender_concept_id"]) for p in persons],
        "YEAR_OF_BIRTH": [int(p["year_of_birth"]) for p in persons],
        "BIRTH_DATETIME": pa.array([pd.Timestamp(p["birth_datetime"]) for p in persons], pa.timestamp("s")),
        "RACE_CONCEPT_ID": [int(p["race_concept_id"]) for p in persons],
        "ETHNICITY_CONCEPT_ID": [int(p["ethnicity_concept_id"]) for p in persons],
    })
    pq.write_table(table, tmp_path / "person.parquet")
    data = (tmp_path / "person.parquet").read_bytes()
    assert sniff(data, "person.parquet") == "parquet"
    patients = parse_tabular(data, "parquet", [], site=SITE).rows["patients"]
    assert [p["mrn"] for p in patients] == [p["person_id"] for p in persons]
    assert patients[0]["location"] == "row 1"
    assert [p["birth_date"] for p in patients] == [date.fromisoformat(p["birth_datetime"][:10]) for p in persons]


# ---------------------------------------------------------------------------------------------
# Concepts


@needs_export
def test_the_concept_table_parses_to_concepts(parsed, vocabulary):
    concepts = parsed["concept"].concepts
    assert len(concepts) == len(vocabulary) == 2294
    assert pa.Table.from_pylist(concepts, schema=CONCEPT_SCHEMA).num_rows == 2294
    by_id = {c["concept_id"]: c for c in concepts}
    systems = {"SNOMED": SNOMED, "RxNorm": RXNORM, "LOINC": LOINC, "UCUM": UCUM}
    for concept_id, row in vocabulary.items():
        concept = by_id[int(concept_id)]
        assert (concept["code"], concept["display"]) == (row["concept_code"], row["concept_name"])
        assert concept["system"] == systems.get(row["vocabulary_id"], row["vocabulary_id"])


def test_a_concept_row_without_an_integer_id_is_rejected_with_its_row():
    frame = pd.DataFrame({"concept_id": ["8507", "x", "8532"], "concept_name": ["MALE", "y", "FEMALE"],
                          "vocabulary_id": ["Gender", "Gender", "Gender"], "concept_code": ["M", "y", "F"]})
    table, rejects = concept_table(frame, first_row=2)
    assert table["concept_id"].tolist() == [8507, 8532]
    assert [(e.code, e.location) for e in rejects] == [(INVALID_RECORD, "row 3")]


def frame_of(records, table: str) -> pd.DataFrame:
    return pd.DataFrame(records.rows[table])


@needs_export
def test_resolved_conditions_are_snomed_drugs_rxnorm_measurements_loinc_in_ucum(cdm_files, parsed, vocabulary):
    concepts = pd.DataFrame(parsed["concept"].concepts)

    conditions = resolve_omop_concepts(frame_of(parsed["condition_occurrence"], "conditions"), "conditions", concepts)
    assert set(conditions["system"]) == {SNOMED}
    source = rows_of(cdm_files["condition_occurrence"])
    assert conditions["code"].tolist() == [vocabulary[r["condition_concept_id"]]["concept_code"] for r in source]
    assert conditions["display"].tolist() == [vocabulary[r["condition_concept_id"]]["concept_name"] for r in source]

    drugs = resolve_omop_concepts(frame_of(parsed["drug_exposure"], "medication_exposures"), "medication_exposures",
                                  concepts)
    assert set(drugs["drug_system"]) == {RXNORM}
    source = rows_of(cdm_files["drug_exposure"])
    assert drugs["drug_code"].tolist() == [vocabulary[r["drug_concept_id"]]["concept_code"] for r in source]

    measured = resolve_omop_concepts(frame_of(parsed["measurement"], "observations"), "observations", concepts)
    assert set(measured["system"]) == {LOINC}
    numeric = [r for r in rows_of(cdm_files["measurement"]) if r["value_as_number"]]
    ucum = [vocabulary[r["unit_concept_id"]]["concept_code"] if r["unit_concept_id"] != "0" else r["unit_source_value"]
            for r in numeric]
    assert measured["unit"].tolist() == ucum
    assert all(vocabulary[r["unit_concept_id"]]["vocabulary_id"] == "UCUM" for r in numeric if r["unit_concept_id"] != "0")


@needs_export
def test_units_known_only_by_concept_resolve_to_their_ucum_code(cdm_files, parsed, vocabulary):
    rows = [r for r in rows_of(cdm_files["measurement"]) if r["value_as_number"] and r["unit_concept_id"] != "0"]
    for row in rows:
        row["unit_source_value"] = ""
    records = parse_tabular(write_rows(rows), "csv", [], site=SITE)
    frame = frame_of(records, "observations")
    assert frame["unit"].str.startswith("omop-concept:").all()
    resolved = resolve_omop_concepts(frame, "observations", pd.DataFrame(parsed["concept"].concepts))
    assert resolved["unit"].tolist() == [vocabulary[r["unit_concept_id"]]["concept_code"] for r in rows]


@needs_export
def test_categorical_values_resolve_and_unknown_ids_stay_omop_concepts(cdm_files, parsed, vocabulary):
    rows = rows_of(cdm_files["observation"])[:2]
    negative = next(cid for cid, row in vocabulary.items() if row["vocabulary_id"] == "SNOMED")
    rows[0]["value_as_concept_id"] = negative
    rows[1]["value_as_concept_id"] = "999999999"  # not in the export's vocabulary
    rows[1]["observation_concept_id"] = "999999998"
    frame = frame_of(parse_tabular(write_rows(rows), "csv", [], site=SITE), "observations")
    resolved = resolve_omop_concepts(frame, "observations", pd.DataFrame(parsed["concept"].concepts))
    first, second = resolved.to_dict("records")
    assert (first["value_system"], first["value_code"]) == (SNOMED, vocabulary[negative]["concept_code"])
    assert first["system"] == LOINC
    assert (second["system"], second["code"], second["display"]) == (OMOP_CONCEPT, "999999998", None)
    assert (second["value_system"], second["value_code"]) == (OMOP_CONCEPT, "999999999")


def test_resolve_leaves_other_systems_and_tables_alone():
    concepts = pd.DataFrame([{"concept_id": 201826, "system": SNOMED, "code": "44054006", "display": "Diabetes"}])
    frame = pd.DataFrame([
        {"system": OMOP_CONCEPT, "code": "201826", "display": None},
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "201826", "display": None},
    ])
    resolved = resolve_omop_concepts(frame, "conditions", concepts)
    assert resolved.to_dict("records") == [
        {"system": SNOMED, "code": "44054006", "display": "Diabetes"},
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "201826", "display": None},
    ]
    assert frame.loc[0, "system"] == OMOP_CONCEPT  # the input is not modified
    patients = pd.DataFrame([{"patient_id": "p", "sex": "male"}])
    assert resolve_omop_concepts(patients, "patients", concepts) is patients
