"""medmeta synth: a deterministic synthetic multi-site cohort that matches the site mappings,
the FHIR conventions and the unit table, DICOM that reads back, and every planted fault."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zipfile
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import yaml

from medmeta import errors
from medmeta.errors import MedmetaError
from medmeta.ingest.config import IngestConfig
from medmeta.landing.walk import entry_logical_path
from medmeta.synth import generate_cohort, generate_images, phantoms
from medmeta.synth.catalogue import DEFAULT_DISEASES, DISEASES
from medmeta.synth.cohort import build_cohort
from medmeta.terminology.systems import LOINC as LOINC_SYSTEM

SEED = 7
PATIENTS = 240
ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")
ATC = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")
FILE_FAULT_CODES = {
    errors.EMPTY_FILE, errors.TRUNCATED_DICOM, errors.NOT_DICOM, errors.CORRUPT_DICOM, errors.NO_PIXEL_DATA,
    errors.IMAGE_TOO_LARGE, errors.UNDECODABLE_PIXELS, errors.MALFORMED_JSON, errors.NOT_FHIR,
    errors.UNKNOWN_RESOURCE_TYPE, errors.UNSUPPORTED_FILE_TYPE, errors.UNKNOWN_SITE_LAYOUT, errors.ZIP_PATH_ESCAPE,
    errors.ZIP_ENTRY_TOO_LARGE, errors.SYMLINK_OUTSIDE_SOURCE,
}
ROW_FAULT_CODES = {errors.MALFORMED_JSON, errors.NON_NUMERIC_VALUE, errors.UNKNOWN_RESOURCE_TYPE,
                   errors.FUTURE_BIRTH_DATE}


# ---------------------------------------------------------------- fixtures and helpers


def config_yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("medmeta.config").joinpath(name).read_text())


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes (symlinks: their target text)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "landing"
    return out, generate_cohort(out, patients=PATIENTS, seed=SEED, faults=True)


@pytest.fixture(scope="module")
def out(run) -> Path:
    return run[0]


@pytest.fixture(scope="module")
def summary(run) -> dict:
    return run[1]


@pytest.fixture(scope="module")
def units():
    """The ingest's unit converter (config/units.yaml on a UCUM library)."""
    from medmeta.records.units import default_units

    return default_units()


@pytest.fixture(scope="module")
def images(out) -> list[tuple[str, pydicom.Dataset]]:
    """(logical path, dataset) of every cohort image, site C's read from inside the zip."""
    found = [(p.relative_to(out).as_posix(), pydicom.dcmread(p)) for p in sorted((out / "imaging").glob("site_*/*.dcm"))]
    with zipfile.ZipFile(out / "imaging" / "site_c_images.zip") as archive:
        for name in sorted(archive.namelist()):
            found.append((f"imaging/site_c_images.zip/{name}", pydicom.dcmread(io.BytesIO(archive.read(name)))))
    return found


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def column_name(spec) -> str:
    return spec["column"] if isinstance(spec, dict) else spec


def mapped_columns(table: dict) -> set[str]:
    """Every column a site mapping table names: match, columns, wide and phi."""
    named = set(table["match"]) | {column_name(s) for s in table["columns"].values()}
    return named | set(table.get("wide", {})) | set(table.get("phi", []))


def table_for(header: list[str], mapping: dict) -> list[str]:
    return [t["table"] for t in mapping["tables"] if set(t["match"]) <= set(header)]


def fhir_resources(out: Path) -> list[dict]:
    bundle = json.loads((out / "site_b" / "bundle_2025.json").read_text(encoding="utf-8"))
    found = [e["resource"] for e in bundle["entry"]]
    for path in sorted((out / "site_b" / "bulk").glob("*.ndjson")):
        found += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return found


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_trees_and_another_seed_differs(run, tmp_path):
    out, first_summary = run
    again = tmp_path / "again" / "landing"
    assert generate_cohort(again, patients=PATIENTS, seed=SEED, faults=True) == first_summary
    assert tree_digest(again) == tree_digest(out)
    assert tree_digest(again.parent / "landing-outside") == tree_digest(out.parent / "landing-outside")

    other = tmp_path / "other" / "landing"
    generate_cohort(other, patients=PATIENTS, seed=SEED + 1)
    first, second = tree_digest(out), tree_digest(other)
    shared = [p for p in second if p in first]
    assert shared and all(first[p] != second[p] for p in shared if not p.startswith("faults/"))


def test_summary_is_json_and_answers_are_not_in_the_landing_data(out, summary):
    json.dumps(summary)
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert b"expected_faults" not in data and b"zip_path_escape" not in data, path


def test_rewriting_replaces_and_a_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "landing"
    generate_cohort(out, patients=12, seed=1, faults=False)
    generate_cohort(out, patients=12, seed=1, faults=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MedmetaError):
        generate_cohort(out, patients=12, seed=1)


# ---------------------------------------------------------------- the cohort


def test_diseases_drugs_and_sites(summary):
    diseases = summary["diseases"]
    counts = [d["patients"] for d in diseases.values()]
    assert len(diseases) >= 14 and all(ICD10.match(code) for code in diseases)
    assert sum(1 for n in counts if 0 < n < 10) >= 3, "rare diseases"
    assert sum(1 for n in counts if n >= 25) >= 3, "common diseases"
    assert sum(counts) == PATIENTS
    assert len(summary["drugs"]) == 8 and all(ATC.match(atc) for atc in summary["drugs"])
    for drug in summary["drugs"].values():
        assert drug["exposures"] >= 20 and 0 < drug["responders"] < drug["exposures"]
    sites = {site: info["patients"] for site, info in summary["sites"].items()}
    assert sites == {"site_a": 96, "site_b": 72, "site_c": 72}
    mrns = summary["labels"]
    assert len(mrns) == PATIENTS and all(re.match(r"^[ABC]\d{7}$", m) for m in mrns)
    assert all(m[0] == info["site"][-1].upper() for m, info in mrns.items())


# ---------------------------------------------------------------- site A


def test_site_a_csvs_have_exactly_the_mapped_columns(out):
    mapping = config_yaml("sites/site_a.yaml")
    tables = {t["table"]: t for t in mapping["tables"]}
    expected = {"patients.csv": "patients", "patients_2025q4.csv": "patients", "diagnoses.csv": "conditions",
                "labs.csv": "observations", "medications.csv": "medication_exposures"}
    for name, table in expected.items():
        header, rows = read_csv(out / "site_a" / name)
        assert table_for(header, mapping) == [table], name
        assert set(header) == mapped_columns(tables[table]), name
        assert rows and all(all(row[c] != "" for c in tables[table]["match"]) for row in rows), name


def test_site_a_values_follow_the_mapping(out):
    mapping = {t["table"]: t for t in config_yaml("sites/site_a.yaml")["tables"]}
    _, patients = read_csv(out / "site_a" / "patients.csv")
    _, q4 = read_csv(out / "site_a" / "patients_2025q4.csv")
    sex_codes = mapping["patients"]["columns"]["sex"]["codes"]
    for row in patients + q4:
        datetime.strptime(row["DOB"], mapping["patients"]["columns"]["birth_date"]["date_format"])
        assert row["GENDER"] in sex_codes and row["LAST_NAME"] and row["PHONE"] and row["STREET_ADDRESS"]
    overlap = {r["MRN"] for r in patients} & {r["MRN"] for r in q4}
    assert 1 <= len(overlap) < len(q4)
    assert [r for r in patients if r["MRN"] in overlap] == [r for r in q4 if r["MRN"] in overlap]
    _, diagnoses = read_csv(out / "site_a" / "diagnoses.csv")
    assert all("." not in r["DX_CODE"] and ICD10.match(r["DX_CODE"][:3] + "." + r["DX_CODE"][3:]
                                                         if len(r["DX_CODE"]) > 3 else r["DX_CODE"])
               for r in diagnoses)
    _, medications = read_csv(out / "site_a" / "medications.csv")
    assert {r["RESPONDED"] for r in medications} == {"Y", "N"}
    _, labs = read_csv(out / "site_a" / "labs.csv")
    names = {(r["FIRST_NAME"], r["LAST_NAME"]) for r in patients + q4}
    assert any(first in r["LAB_NOTES"] and last in r["LAB_NOTES"] for r in labs for first, last in names)


# ---------------------------------------------------------------- site C


def test_site_c_parquet_has_exactly_the_mapped_columns_and_types(out):
    mapping = config_yaml("sites/site_c.yaml")
    tables = {t["table"]: t for t in mapping["tables"]}
    expected = {"patients.parquet": "patients", "problems.parquet": "conditions",
                "measurements.parquet": "observations", "drugs.parquet": "medication_exposures"}
    for name, table in expected.items():
        schema = pq.read_schema(out / "site_c" / name)
        assert table_for(schema.names, mapping) == [table], name
        assert set(schema.names) == mapped_columns(tables[table]), name
    patients = pq.read_table(out / "site_c" / "patients.parquet")
    assert patients.schema.field("birth_dt").type == pa.date32()
    assert set(patients["sex_code"].to_pylist()) <= set(tables["patients"]["columns"]["sex"]["codes"])
    assert all(patients["full_name"].to_pylist()) and all(patients["email"].to_pylist())
    measurements = pq.read_table(out / "site_c" / "measurements.parquet")
    assert pa.types.is_timestamp(measurements.schema.field("taken_at").type)
    assert measurements.schema.field("result").type == pa.float64()
    outcomes = set(pq.read_table(out / "site_c" / "drugs.parquet")["outcome"].to_pylist())
    assert outcomes == {"responder", "non_responder"}
    problems = pq.read_table(out / "site_c" / "problems.parquet")["icd10"].to_pylist()
    assert all(ICD10.match(code) for code in problems)


# ---------------------------------------------------------------- units


def canonical_means(rows: list[tuple[str, str, float]], units) -> dict[str, float]:
    """Mean canonical value per analyte, converted by the ingest's converter (config/units.yaml)."""
    name_of = {a.loinc: name for name, a in units.analytes().items()}
    values = {}
    for code, unit, value in rows:
        canonical, converted, _ = units.convert(LOINC_SYSTEM, code, value, unit)
        values.setdefault(name_of[canonical], []).append(converted)
    return {name: float(np.mean(v)) for name, v in values.items()}


def test_every_site_uses_units_from_the_unit_table_and_values_agree(out, units):
    wide = {t["table"]: t for t in config_yaml("sites/site_a.yaml")["tables"]}["observations"]["wide"]
    _, labs = read_csv(out / "site_a" / "labs.csv")
    site_a = [(spec["code"], spec["unit"], float(row[column]))
              for row in labs for column, spec in wide.items() if row[column]]
    measurements = pq.read_table(out / "site_c" / "measurements.parquet").to_pylist()
    site_c = [(m["test_loinc"], m["result_unit"], m["result"]) for m in measurements]
    observations = [r for r in fhir_resources(out) if r["resourceType"] == "Observation"]
    site_b = [(o["code"]["coding"][0]["code"], o["valueQuantity"]["code"], o["valueQuantity"]["value"])
              for o in observations]
    for site in (site_a, site_b, site_c):
        assert all(units.rule(LOINC_SYSTEM, code, unit).unit == units.canonical_unit(code) for code, unit, _ in site)
    plausible = {"glucose": (4, 9), "creatinine": (60, 140), "hemoglobin": (11, 15.5), "sodium": (135, 142),
                 "body_weight": (65, 90), "body_temperature": (36.5, 37.5)}
    for site in (site_a, site_b, site_c):
        means = canonical_means(site, units)
        for name, (low, high) in plausible.items():
            assert low < means[name] < high, (name, means[name])
    assert {u for c, u, _ in site_c if c in ("718-7", "59260-0")} == {"g/L", "mmol/L"}, "a mix of units"


# ---------------------------------------------------------------- site B


def test_fhir_resources_follow_the_conventions(out):
    bundle = json.loads((out / "site_b" / "bundle_2025.json").read_text(encoding="utf-8"))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"])
    found = fhir_resources(out)
    assert {r["resourceType"] for r in found} == {"Patient", "Condition", "Observation", "MedicationStatement"}
    assert all(r["meta"]["source"] == "site_b" for r in found)
    patients = {r["id"]: r for r in found if r["resourceType"] == "Patient"}
    bundled = sum(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"])
    assert len(patients) == 72 and abs(2 * bundled - len(patients)) <= 1
    for p in patients.values():
        (identifier,) = p["identifier"]
        assert identifier["system"] == "urn:medmeta:site-b:mrn" and re.match(r"^B\d{7}$", identifier["value"])
        assert identifier["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                   "code": "MR"}
        assert p["id"] != identifier["value"] and p["name"] and p["telecom"] and p["address"]
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", p["birthDate"]) and p["gender"] in ("male", "female", "unknown")
    for r in found:
        if r["resourceType"] != "Patient":
            assert r["subject"]["reference"].removeprefix("Patient/") in patients
    for r in found:
        kind = r["resourceType"]
        if kind == "Condition":
            assert r["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm" and r["onsetDateTime"]
            assert ICD10.match(r["code"]["coding"][0]["code"])
        elif kind == "Observation":
            quantity = r["valueQuantity"]
            assert r["status"] == "final" and r["code"]["coding"][0]["system"] == "http://loinc.org"
            assert isinstance(quantity["value"], (int, float)) and quantity["system"] == "http://unitsofmeasure.org"
            assert r["effectiveDateTime"] and r["note"][0]["text"]
        elif kind == "MedicationStatement":
            assert r["status"] == "completed" and r["effectivePeriod"]["start"]
            assert r["medicationCodeableConcept"]["coding"][0]["system"] == "http://www.whocc.no/atc"
            (extension,) = r["extension"]
            assert extension["url"] == "https://medmeta.dev/fhir/StructureDefinition/treatment-response"
            assert extension["valueCode"] in ("response", "no_response")


# ---------------------------------------------------------------- DICOM


def test_dicom_reads_back_with_cohort_patients_and_a_mix_of_encodings(images, summary):
    assert len(images) == summary["images"]["total"] > PATIENTS // 2
    labels = summary["labels"]
    syntaxes, modalities, uids = set(), set(), set()
    for path, ds in images:
        assert ds.PatientID in labels and labels[ds.PatientID]["site"] in path
        assert re.match(r"^[0-9]+\.dcm$", path.rsplit("/", 1)[1]), "file names carry no PHI"
        assert ds.PatientName and ds.PatientBirthDate and ds.PatientAddress and ds.OtherPatientIDs
        assert ds.RequestAttributesSequence[0].ReferencedStudySequence[0].ReferencedSOPInstanceUID
        assert ds.InstitutionName and ds.ReferringPhysicianName and ds.AccessionNumber
        private = ds.private_block(0x0009, "ACME_PACS 3.1")[0x10].value  # bytes (UN) in Implicit VR files
        assert ds.PatientID in (private.decode("latin-1") if isinstance(private, bytes) else private)
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.std() > 0
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        modalities.add(ds.Modality)
        uids.add(ds.SOPInstanceUID)
        if ds.Modality == "CT":
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and float(ds.RescaleIntercept) == -1024
            hu = pixels.astype(np.float32) + float(ds.RescaleIntercept)
            assert hu.min() >= -1024 and hu.max() > 0
        else:
            assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert modalities == {"CT", "MR"} and len(syntaxes) >= 3 and len(uids) == len(images)
    assert pydicom.uid.DeflatedExplicitVRLittleEndian in syntaxes and pydicom.uid.JPEG2000Lossless in syntaxes
    assert pydicom.uid.RLELossless in syntaxes
    sizes = {(path.split("/")[1][:6], ds.Modality, ds.Rows) for path, ds in images}
    assert sizes == {("site_a", "CT", 256), ("site_b", "MR", 192), ("site_c", "CT", 224), ("site_c", "MR", 160)}


@pytest.mark.parametrize("modality,size", [("CT", 128), ("MR", 96)])
def test_image_pixels_carry_a_subtle_but_learnable_disease_signal(modality, size):
    """Leave-one-out nearest centroid on 32x32 thumbnails of 30 renders per disease beats chance
    (1/15) twice over, though the pattern is subtle on purpose (a conv net does far better)."""
    codes = [d.code for d in DISEASES[:DEFAULT_DISEASES]]
    x, y = [], []
    for k, code in enumerate(codes):
        rng = np.random.default_rng([7, k])
        for _ in range(30):
            image = phantoms.render(modality, code, size, rng)
            side = size // 32
            x.append(image.reshape(32, side, 32, side).mean(axis=(1, 3)).ravel())
            y.append(k)
    x, y = np.array(x), np.array(y)
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    correct = 0
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        centroids = np.stack([x[rest & (y == c)].mean(axis=0) for c in range(len(codes))])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(axis=1)) == y[i])
    assert correct / len(y) > 2 / len(codes), (modality, correct, len(y))


def test_generate_images_is_fast_and_deterministic(tmp_path):
    assert generate_images(tmp_path / "a", count=50, size=96, seed=3) == 50
    generate_images(tmp_path / "b", count=50, size=96, seed=3)
    generate_images(tmp_path / "c", count=50, size=96, seed=4)
    first = tree_digest(tmp_path / "a")
    assert len(first) == 50 and first == tree_digest(tmp_path / "b") and first != tree_digest(tmp_path / "c")
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "a").rglob("*.dcm"))]
    assert {(ds.Rows, ds.Columns) for ds in datasets} == {(96, 96)} and {ds.Modality for ds in datasets} == {"CT", "MR"}


# ---------------------------------------------------------------- faults


def test_every_fault_code_is_planted_and_every_path_exists(out, summary):
    expected = summary["expected_faults"]
    assert set(expected.values()) == FILE_FAULT_CODES
    for logical, code in expected.items():
        archive, _, member = logical.partition(".zip/")
        if member:
            with zipfile.ZipFile(out / f"{archive}.zip") as zf:
                assert member in {entry_logical_path(n) for n in zf.namelist()}, logical
        else:
            assert (out / logical).is_symlink() or (out / logical).is_file(), logical
    assert {f["code"] for f in summary["expected_row_faults"]} == ROW_FAULT_CODES
    assert all((out / f["path"]).is_file() for f in summary["expected_row_faults"])


def test_fault_files_are_what_they_claim(out, summary):
    config = IngestConfig.load()
    faults = out / "faults"
    assert (faults / "empty.csv").stat().st_size == 0
    with zipfile.ZipFile(faults / "bomb.zip") as zf:
        (entry,) = zf.infolist()
        assert entry.file_size > config.max_zip_entry_bytes and entry.compress_size < 2_000_000
    with zipfile.ZipFile(faults / "escape.zip") as zf:
        assert zf.namelist() == ["../../escaped.txt"]
    link = faults / "outside_link.csv"
    assert link.is_symlink() and out.resolve() not in link.resolve().parents and link.resolve().is_file()
    assert (out / summary["outside_files"][0]).resolve() == link.resolve()
    huge = pydicom.dcmread(faults / "huge_header.dcm")
    assert huge.Rows * huge.Columns > config.max_pixels_per_image
    assert "PixelData" not in pydicom.dcmread(faults / "no_pixels.dcm")
    bad = pydicom.dcmread(faults / "bad_jpeg.dcm")
    assert bad.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    with pytest.raises(Exception):
        bad.pixel_array
    for name in ("report.dcm", "noise.dcm"):
        assert (faults / name).read_bytes()[128:132] != b"DICM"
    assert (faults / "corrupt.dcm").read_bytes()[128:132] == b"DICM"
    assert (faults / "scan_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_row_faults_point_at_the_bad_line_and_entries(out, summary):
    for fault in summary["expected_row_faults"]:
        path, number = out / fault["path"], int(fault["location"].split()[1])
        if fault["location"].startswith("line "):
            lines = path.read_text(encoding="utf-8").splitlines()
            with pytest.raises(json.JSONDecodeError):
                json.loads(lines[number - 1])
            assert all(json.loads(line) for i, line in enumerate(lines, 1) if i != number)
            continue
        resource = json.loads(path.read_text(encoding="utf-8"))["entry"][number - 1]["resource"]
        if fault["code"] == errors.NON_NUMERIC_VALUE:
            assert isinstance(resource["valueQuantity"]["value"], str)
        elif fault["code"] == errors.UNKNOWN_RESOURCE_TYPE:
            assert resource["resourceType"] not in ("Patient", "Observation", "Condition", "MedicationStatement")
        else:
            assert resource["birthDate"] > "2026"


def test_a_cohort_can_draw_on_the_rarer_diseases_too(tmp_path):
    common = build_cohort(240, seed=0)
    assert set(common.diseases) == {d.code for d in DISEASES[:DEFAULT_DISEASES]}
    assert {p.disease for p in common.patients} <= set(common.diseases)
    wide = build_cohort(900, seed=0, diseases=len(DISEASES))
    drawn = {p.disease for p in wide.patients}
    assert drawn == {d.code for d in DISEASES}, "every disease of the catalogue gets patients at 900"
    assert len(set(phantoms.PATTERNS)) == len(DISEASES), "every disease has its own image pattern"
    summary = generate_cohort(tmp_path / "wide", patients=60, seed=1, diseases=20)
    assert list(summary["diseases"]) == [d.code for d in DISEASES[:20]]
    assert sum(v["patients"] for v in summary["diseases"].values()) == 60
    with pytest.raises(MedmetaError, match="from 2 to 45 diseases"):
        generate_cohort(tmp_path / "bad", patients=60, diseases=46)
