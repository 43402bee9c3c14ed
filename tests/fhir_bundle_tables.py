"""The shared Synthea FHIR R4 bundles as canonical v2 tables, read with plain ``json`` (no medmeta code).

Until medmeta's own ingest lands SNOMED CT conditions, RxNorm drugs and LOINC observations, the
task-set tests measure on real data through this small, independent reader:

- patients: ``Patient.id`` is the patient id; sex from ``gender``; age in whole years on
  ``AGE_REFERENCE`` (the export's year), capped at 90 as the store does;
- conditions: every SNOMED CT coding of ``Condition.code`` (verificationStatus refuted and
  entered-in-error left out), onset from ``onsetDateTime``;
- medication_exposures: RxNorm ``MedicationRequest.medicationCodeableConcept``, start from
  ``authoredOn``, outcome ``unknown`` (real exports carry none);
- observations: LOINC ``valueQuantity`` values, and each component of a panel (blood pressure) as its
  own row; ``valueCodeableConcept`` as a categorical row (value null). Units kept as exported (UCUM,
  already Synthea's canonical ones for the analytes the rules use: %, mg/dL, mm[Hg]).

Dates are not shifted (one offset per patient would not change any interval).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from medmeta.schema import TABLES

SNOMED, RXNORM, LOINC = "http://snomed.info/sct", "http://www.nlm.nih.gov/research/umls/rxnorm", "http://loinc.org"
BUNDLES = "synthea_r4_transaction_bundles_100p.zip"
AGE_REFERENCE = date(2020, 5, 1)


def realdata_dir() -> Path:
    """``../shared/realdata`` next to the repository, or ``$MEDMETA_REALDATA``."""
    override = os.environ.get("MEDMETA_REALDATA")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def synthea_zip(tmp_path: Path) -> Path:
    """The 100-patient bundles copied into ``tmp_path``; skips the test when the shared data is absent."""
    source = realdata_dir() / BUNDLES
    if not source.is_file():
        pytest.skip(f"{BUNDLES} not found in {realdata_dir()} (set MEDMETA_REALDATA to the shared realdata folder)")
    target = tmp_path / BUNDLES
    shutil.copyfile(source, target)
    return target


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def _ref(reference: str) -> str:
    return reference.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


def _codings(concept: dict | None, system: str) -> list[dict]:
    return [c for c in (concept or {}).get("coding", []) if c.get("system") == system and c.get("code")]


def read_synthea(path: Path) -> dict[str, pd.DataFrame]:
    """Every table of the canonical schema from the bundles in the zip at ``path``."""
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    base = {"site": "synthea", "source": "test"}
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if not name.endswith(".json"):
                continue
            bundle = json.loads(archive.read(name))
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                kind = resource.get("resourceType")
                if kind == "Patient":
                    born = _day(resource.get("birthDate"))
                    years = AGE_REFERENCE.year - born.year - ((AGE_REFERENCE.month, AGE_REFERENCE.day) < (born.month, born.day))
                    rows["patients"].append({"patient_id": resource["id"], "sex": resource.get("gender", "unknown"),
                                             "age_years": min(years, 90), **base})
                elif kind == "Condition":
                    status = [c.get("code") for c in resource.get("verificationStatus", {}).get("coding", [])]
                    if {"refuted", "entered-in-error"} & set(status):
                        continue
                    for c in _codings(resource.get("code"), SNOMED):
                        rows["conditions"].append({"patient_id": _ref(resource["subject"]["reference"]), "system": SNOMED,
                                                   "code": c["code"], "display": c.get("display"),
                                                   "onset_date": _day(resource.get("onsetDateTime")), **base})
                elif kind == "MedicationRequest":
                    for c in _codings(resource.get("medicationCodeableConcept"), RXNORM):
                        rows["medication_exposures"].append(
                            {"patient_id": _ref(resource["subject"]["reference"]), "drug_system": RXNORM,
                             "drug_code": c["code"], "drug_display": c.get("display"),
                             "start_date": _day(resource.get("authoredOn")), "outcome": "unknown", **base})
                elif kind == "Observation" and resource.get("status") not in ("cancelled", "entered-in-error"):
                    patient, when = _ref(resource["subject"]["reference"]), _day(resource.get("effectiveDateTime"))
                    for part in [resource, *resource.get("component", [])]:
                        for c in _codings(part.get("code"), LOINC):
                            row = {"patient_id": patient, "system": LOINC, "code": c["code"], "display": c.get("display"),
                                   "value": None, "comparator": None, "censored": False, "value_system": None,
                                   "value_code": None, "unit": None, "effective_date": when, **base}
                            if "valueQuantity" in part:
                                q = part["valueQuantity"]
                                comparator = q.get("comparator")
                                row.update(value=float(q["value"]), unit=q.get("code") or q.get("unit"),
                                           comparator=comparator, censored=comparator is not None)
                            elif "valueCodeableConcept" in part:
                                first = (part["valueCodeableConcept"].get("coding") or [{}])[0]
                                row.update(value_system=first.get("system"), value_code=first.get("code"))
                            else:
                                continue
                            rows["observations"].append(row)
    tables = {name: pd.DataFrame(rows[name], columns=TABLES[name].names) for name in TABLES}
    return {**tables, "observations": as_stored(tables["observations"])}


def as_stored(observations: pd.DataFrame) -> pd.DataFrame:
    """Values in the store's canonical codes and units (units.yaml), as ingest's consolidation leaves them."""
    from medmeta.ingest.units_step import convert_units
    from medmeta.records.units import default_units

    converted, rejects = convert_units(observations.assign(location="entry", source="synthea"), default_units())
    assert rejects.empty
    return converted[observations.columns].reset_index(drop=True)


def write_validated_home(root: Path, tables: dict[str, pd.DataFrame], snapshot: str = "s-test"):
    """A home whose current snapshot passed validation with exactly ``tables`` as its validated rows.

    Real files in the layout the gate reads (manifest.json, validation/<snapshot>/result.json and
    tables/*.parquet), so the task-set code runs exactly as on an ingested home."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medmeta.home import Home
    from validation.gate import record_result, validation_dir

    home = Home(root)
    home.ensure()
    home.manifest.write_text(json.dumps({"snapshot": snapshot}))
    folder = validation_dir(home, snapshot) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in TABLES.items():
        frame = tables.get(name, pd.DataFrame(columns=schema.names)).reindex(columns=schema.names)  # absent: null
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), folder / f"{name}.parquet")
    record_result(home, {"snapshot": snapshot, "success": True, "critical_failures": [], "label_coverage": []})
    return home
