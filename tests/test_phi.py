"""PHI never reaches the store, the cache, the logs or the Prefect database.

A unique marker is planted in every PHI attribute of a real DICOM file (every string-valued
attribute of PS3.15 Table E.1-1 that is not kept, at the top level and inside nested
sequences, and private tags), in UIDs, in the MRN, in a distinctive true date, and in every PHI
field of CSV and FHIR records. After ingest, every byte under the home (quarantine aside), the
captured logs and the Prefect database are searched for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medmeta.dicom.basic_profile import BASIC_PROFILE
from tests.conftest import TEST_KEY
from tests.phi_search import readable
from tests.realdata import BUNDLES_100P, copy_export, needs_realdata

MARK = "PHIMARK9931"
MRN = "A7PHIMARK9931"
UID_MARK = "99317731"
TRUE_DATE = "19770707"
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"}


def _plant(ds: Dataset) -> None:
    for tag, action in BASIC_PROFILE.items():
        if action == "K" or (tag >> 16) in (0x0000, 0x0002):
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in TEXT_VRS:
            ds.add_new(tag, vr, MARK)
        elif vr == "UI":
            ds.add_new(tag, vr, f"1.2.826.0.1.3680043.9.{UID_MARK}.{tag & 0xFFFF}")
        elif vr == "DA":
            ds.add_new(tag, vr, TRUE_DATE)


def marked_dicom(path: Path) -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    _plant(ds)
    ds.PatientID = MRN
    ds.PatientSex = "F"
    ds.PatientAge = "041Y"
    inner = Dataset()
    _plant(inner)
    deeper = Dataset()
    _plant(deeper)
    inner.ReferencedStudySequence = Sequence([deeper])
    ds.RequestAttributesSequence = Sequence([inner])
    for target in (ds, inner):
        block = target.private_block(0x0099, "MEDMETA PHI TEST", create=True)
        block.add_new(0x01, "LO", MARK)
        block.add_new(0x02, "PN", MARK)
    ds.save_as(path, enforce_file_format=True)


def marked_records(landing: Path) -> None:
    site_a = landing / "site_a"
    site_a.mkdir(parents=True)
    (site_a / "patients.csv").write_text(
        "MRN,LAST_NAME,FIRST_NAME,DOB,GENDER,STREET_ADDRESS,CITY,PHONE\n"
        f"{MRN},{MARK},{MARK},07/07/1977,F,{MARK} Road,{MARK},{MARK}\n"
    )
    (site_a / "labs.csv").write_text(
        "MRN,LAB_DATE,GLUCOSE_MG_DL,HGB_G_DL,LAB_NOTES\n"
        f"{MRN},1977-07-07,101,13.1,seen by {MARK}\n"
    )
    patient = {
        "resourceType": "Patient", "id": f"pt-{MARK}", "meta": {"source": "site_b"},
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:x", "value": f"B{MARK}"}],
        "name": [{"family": MARK, "given": [MARK]}], "telecom": [{"value": MARK}],
        "address": [{"line": [MARK], "city": MARK}], "birthDate": "1977-07-07", "gender": "female",
        "text": {"div": f"<div>{MARK}</div>"},
    }
    observation = {
        "resourceType": "Observation", "status": "final", "meta": {"source": "site_b"},
        "subject": {"reference": f"Patient/pt-{MARK}", "display": MARK},
        "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
        "valueQuantity": {"value": 6.1, "code": "mmol/L"}, "effectiveDateTime": "1977-07-07",
        "note": [{"text": MARK}], "performer": [{"display": MARK}],
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "meta": {"source": "site_b"},
              "entry": [{"resource": patient}, {"resource": observation}]}
    (landing / "site_b").mkdir()
    (landing / "site_b" / "bundle.json").write_text(json.dumps(bundle))
    (landing / "site_b" / "Observation.ndjson").write_text(json.dumps(observation) + "\n")


def _hits(data: bytes) -> list[str]:
    needles = [MARK, UID_MARK, TRUE_DATE, "1977-07-07", TEST_KEY]
    return [n for n in needles if n.encode() in data]


@pytest.mark.usefixtures("pseudonym_key")
def test_phi_never_leaves_the_landing_zone(prefect_api, tmp_path, caplog, capfd):
    from flows.ingest import ingest_flow

    landing = tmp_path / "landing"
    marked_records(landing)
    (landing / "imaging").mkdir()
    marked_dicom(landing / "imaging" / "scan.dcm")
    home = tmp_path / "home"
    caplog.set_level(logging.DEBUG)
    summary = ingest_flow(str(landing), str(home))

    assert summary["files_quarantined"] == 0, summary["quarantined"]
    assert summary["images"] == 1 and summary["patients"] == 2

    leaks = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and "quarantine" not in path.relative_to(home).parts:
            if found := _hits(readable(path)):
                leaks[str(path.relative_to(home))] = found
    for db_file in prefect_api.parent.glob(prefect_api.name + "*"):  # the database, its WAL and SHM
        if found := _hits(db_file.read_bytes()):
            leaks[f"prefect database {db_file.name}"] = found
    out, err = capfd.readouterr()
    for name, text in (("stdout", out), ("stderr", err), ("log records", caplog.text)):
        if found := _hits(text.encode()):
            leaks[name] = found
    assert leaks == {}


@needs_realdata
@pytest.mark.usefixtures("pseudonym_key")
def test_phi_of_a_real_synthea_bundle_never_leaves_the_landing_zone(prefect_api, tmp_path, caplog, capfd):
    """A real Synthea patient bundle with markers in names, addresses, telecoms, notes and every text field."""
    from flows.ingest import ingest_flow

    export = copy_export(BUNDLES_100P, tmp_path / "export")
    patient_files = sorted(p for p in export.rglob("*.json") if '"resourceType": "Patient"' in p.read_text()[:20000]
                           or '"resourceType":"Patient"' in p.read_text()[:20000])
    bundle = json.loads(patient_files[0].read_text())
    planted, needles = _plant_in_bundle(bundle)
    landing = tmp_path / "landing" / "hospital"
    landing.mkdir(parents=True)
    (landing / "export.json").write_text(json.dumps(bundle))
    home = tmp_path / "home"
    caplog.set_level(logging.DEBUG)
    summary = ingest_flow(str(tmp_path / "landing"), str(home))

    assert summary["files_quarantined"] == 0 and summary["patients"] == 1
    assert summary["tables"]["conditions"] > 0 and summary["tables"]["observations"] > 0
    assert planted > 50  # markers really went into the bundle's text fields
    leaks = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and "quarantine" not in path.relative_to(home).parts:
            data = readable(path)
            if found := [n for n in needles if n.encode() in data]:
                leaks[str(path.relative_to(home))] = found
    for db_file in prefect_api.parent.glob(prefect_api.name + "*"):
        data = db_file.read_bytes()
        if found := [n for n in needles if n.encode() in data]:
            leaks[f"prefect database {db_file.name}"] = found
    out, err = capfd.readouterr()
    for name, text in (("stdout", out), ("stderr", err), ("log records", caplog.text)):
        if found := [n for n in needles if n.encode() in text.encode()]:
            leaks[name] = found
    assert leaks == {}


def _plant_in_bundle(bundle: dict) -> tuple[int, list[str]]:
    """Markers in the Patient's name, address, telecom, identifiers' values and birth date's text, and in
    every ``text``, ``note`` and narrative of every resource; returns (markers planted, needles to search)."""
    planted = 0
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"] = [{"family": MARK, "given": [MARK], "text": f"{MARK} {MARK}"}]
    patient["address"] = [{"line": [f"{MARK} Street"], "city": MARK, "postalCode": MARK}]
    patient["telecom"] = [{"system": "phone", "value": MARK}, {"system": "email", "value": f"{MARK}@example.org"}]
    needles = [MARK, TEST_KEY, patient["birthDate"]]
    needles += [i["value"] for i in patient.get("identifier", []) if len(str(i.get("value", ""))) >= 8]

    def visit(node) -> int:
        count = 0
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if key == "text" and isinstance(value, str):
                    node[key] = f"{MARK} {value}"
                    count += 1
                elif key == "text" and isinstance(value, dict):  # narrative
                    value["div"] = f'<div xmlns="http://www.w3.org/1999/xhtml">{MARK}</div>'
                    count += 1
                else:
                    count += visit(value)
            if node.get("resourceType") in ("Condition", "Observation", "MedicationRequest", "Encounter"):
                node["note"] = [{"text": MARK, "authorString": MARK}]
                count += 1
        elif isinstance(node, list):
            count += sum(visit(item) for item in node)
        return count

    planted += visit(bundle) + 4
    return planted, needles
