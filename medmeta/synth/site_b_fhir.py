"""Site B: FHIR R4 in SI units, half as a Bundle and half as a bulk (NDJSON) export.

Conventions the ingest relies on: every resource has ``meta.source`` = "site_b"; a Patient
has an opaque ``id`` and its MRN under ``identifier`` (type MR, system
``urn:medmeta:site-b:mrn``); every other resource points at it with ``subject.reference`` =
"Patient/<id>", in the Bundle too. Observation notes name the patient (PHI to drop).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from medmeta.synth.catalogue import ANALYTE_BY_NAME, COMORBIDITIES, DISEASE_BY_CODE, DRUG_BY_ATC
from medmeta.synth.cohort import Cohort, Exposure, LabVisit, Patient
from medmeta.synth.seeding import rng_for, uuid_from

SITE = "site_b"
MRN_SYSTEM = "urn:medmeta:site-b:mrn"
IDENTIFIER_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
ATC_SYSTEM = "http://www.whocc.no/atc"
RESPONSE_EXTENSION = "https://medmeta.dev/fhir/StructureDefinition/treatment-response"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
EXPORTED_AT = "2025-12-31T18:00:00+01:00"
RESOURCE_TYPES = ("Patient", "Condition", "Observation", "MedicationStatement")
# analyte -> decimals of the SI value as the lab system reports it
DECIMALS = {
    "glucose": 1, "creatinine": 0, "cholesterol_total": 1, "hemoglobin": 1, "sodium": 0,
    "potassium": 1, "crp": 1, "wbc": 1, "body_weight": 1, "body_height": 0, "systolic_bp": 0,
    "heart_rate": 0, "body_temperature": 1,
}
VITAL_SIGNS = {"body_weight", "body_height", "systolic_bp", "heart_rate", "body_temperature"}
UNIT_DISPLAY = {"umol/L": "µmol/L", "mm[Hg]": "mmHg", "/min": "beats/min"}  # all in units.yaml
NOTE_TEMPLATES = (
    "Sample taken from {name} at the outpatient clinic.",
    "{name} (born {dob}) reports feeling well today.",
    "Repeat requested; {first} to call back on {phone}.",
    "Value discussed with {name} and family.",
)


def meta() -> dict:
    return {"source": SITE}


def subject(p: Patient) -> dict:
    return {"reference": f"Patient/{p.fhir_id}"}


def patient_resource(p: Patient, birth_date: date | None = None) -> dict:
    person = p.person
    return {
        "resourceType": "Patient",
        "id": p.fhir_id,
        "meta": meta(),
        "identifier": [{"type": IDENTIFIER_TYPE, "system": MRN_SYSTEM, "value": p.mrn}],
        "active": True,
        "name": [{"use": "official", "family": person.last_name, "given": [person.first_name]}],
        "telecom": [{"system": "phone", "value": person.phone, "use": "mobile"},
                    {"system": "email", "value": person.email}],
        "gender": p.sex,
        "birthDate": (birth_date or p.birth_date).isoformat(),
        "address": [{"use": "home", "line": [person.street], "city": person.city,
                     "postalCode": person.postcode, "country": "NL"}],
    }


def condition_resource(p: Patient, resource_id: str, code: str, onset: date) -> dict:
    name = DISEASE_BY_CODE[code].name if code in DISEASE_BY_CODE else COMORBIDITIES[code]
    return {
        "resourceType": "Condition",
        "id": resource_id,
        "meta": meta(),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": ICD10_SYSTEM, "code": code, "display": name}], "text": name},
        "subject": subject(p),
        "onsetDateTime": onset.isoformat(),
        "recorder": {"display": p.attending},
    }


def clinic_time(rng: np.random.Generator, day: date) -> str:
    """A local date-time in office hours (so the date is the same in any time zone rule)."""
    minutes = int(rng.integers(7 * 60, 17 * 60))
    return f"{day.isoformat()}T{minutes // 60:02d}:{minutes % 60:02d}:00+01:00"


def si_value(analyte: str, value: float) -> float | int:
    decimals = DECIMALS[analyte]
    return int(round(value)) if decimals == 0 else round(value, decimals)


def observation_resource(p: Patient, resource_id: str, analyte: str, value, when: str, note: str) -> dict:
    spec = ANALYTE_BY_NAME[analyte]
    category = "vital-signs" if analyte in VITAL_SIGNS else "laboratory"
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": meta(),
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": spec.loinc}]},
        "subject": subject(p),
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": UNIT_DISPLAY.get(spec.unit, spec.unit),
                          "system": UCUM_SYSTEM, "code": spec.unit},
        "note": [{"text": note}],
    }


def medication_resource(p: Patient, resource_id: str, exposure: Exposure) -> dict:
    drug = DRUG_BY_ATC[exposure.atc]
    return {
        "resourceType": "MedicationStatement",
        "id": resource_id,
        "meta": meta(),
        "extension": [{"url": RESPONSE_EXTENSION, "valueCode": exposure.outcome}],
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": ATC_SYSTEM, "code": drug.atc,
                                                  "display": drug.name}], "text": drug.name},
        "subject": subject(p),
        "effectivePeriod": {"start": exposure.start.isoformat(),
                            "end": (exposure.start + timedelta(days=90)).isoformat()},
        "informationSource": {"display": exposure.prescriber},
    }


def observation_note(rng: np.random.Generator, p: Patient) -> str:
    template = NOTE_TEMPLATES[int(rng.integers(len(NOTE_TEMPLATES)))]
    return template.format(name=p.person.full_name, first=p.person.first_name,
                           dob=p.birth_date.isoformat(), phone=p.person.phone)


def visit_observations(rng: np.random.Generator, p: Patient, visit: LabVisit) -> list[dict]:
    when = clinic_time(rng, visit.day)
    return [observation_resource(p, uuid_from(rng), analyte, si_value(analyte, value), when,
                                 observation_note(rng, p))
            for analyte, value in visit.values.items()]


def patient_resources(p: Patient, seed: int) -> list[dict]:
    """The Patient and all its Conditions, Observations and MedicationStatements."""
    rng = rng_for(seed, SITE, "resources", p.mrn)
    conditions = [(p.disease, p.diagnosis_date)]
    if p.comorbidity:
        conditions.append((p.comorbidity, p.comorbidity_date))
    resources = [patient_resource(p)]
    resources += [condition_resource(p, uuid_from(rng), code, onset) for code, onset in conditions]
    resources += [obs for visit in p.visits for obs in visit_observations(rng, p, visit)]
    resources += [medication_resource(p, uuid_from(rng), e) for e in p.exposures]
    return resources


def bundle(resources: list[dict], bundle_id: str) -> dict:
    """A FHIR collection Bundle; each entry's fullUrl is ``urn:uuid:<resource id>``."""
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"source": SITE, "lastUpdated": EXPORTED_AT},
        "type": "collection",
        "timestamp": EXPORTED_AT,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def ndjson_line(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


def write_ndjson(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def split_halves(patients: list[Patient], seed: int) -> tuple[list[Patient], list[Patient]]:
    """About half of the patients for the Bundle, the rest for the bulk export."""
    order = rng_for(seed, SITE, "halves").permutation(len(patients))
    in_bundle = {patients[i].mrn for i in order[: (len(patients) + 1) // 2]}
    return ([p for p in patients if p.mrn in in_bundle], [p for p in patients if p.mrn not in in_bundle])


def write_bulk(folder: Path, resources: list[dict]) -> dict[str, int]:
    counts = {}
    for kind in RESOURCE_TYPES:
        lines = [ndjson_line(r) for r in resources if r["resourceType"] == kind]
        write_ndjson(folder / f"{kind}.ndjson", lines)
        counts[f"bulk/{kind}.ndjson"] = len(lines)
    return counts


def write_site_b(cohort: Cohort, out: Path) -> dict:
    """Write ``site_b/bundle_2025.json`` and ``site_b/bulk/*.ndjson``; returns counts."""
    patients = cohort.at(SITE)
    bundled, bulk = split_halves(patients, cohort.seed)
    bundle_resources = [r for p in bundled for r in patient_resources(p, cohort.seed)]
    bundle_id = uuid_from(rng_for(cohort.seed, SITE, "bundle-id"))
    write_json(out / SITE / "bundle_2025.json", bundle(bundle_resources, bundle_id))
    counts = {"bundle_2025.json": len(bundle_resources)}
    counts.update(write_bulk(out / SITE / "bulk", [r for p in bulk for r in patient_resources(p, cohort.seed)]))
    return {"patients": len(patients), "patients_in_bundle": len(bundled), "resources": counts}
