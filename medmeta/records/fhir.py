"""FHIR R4 (a Bundle, one resource, or bulk-export NDJSON) to ``RawRecords``.

Read: Patient (MRN identifier, birthDate, gender), Condition (ICD-10-CM), Observation (LOINC
with a valueQuantity), MedicationStatement (ATC, start, treatment-response extension). Names,
telecoms, addresses, notes and narrative are never read. Other R4 resource types are counted
as ignored; a resourceType that is not R4 is rejected.
"""

from __future__ import annotations

import json
from datetime import date

from medmeta.errors import (
    INVALID_RECORD,
    MALFORMED_JSON,
    NOT_FHIR,
    NON_NUMERIC_VALUE,
    UNKNOWN_RESOURCE_TYPE,
    Rejected,
)
from medmeta.records.fhir_types import R4_RESOURCE_TYPES
from medmeta.records.raw import RawRecords

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
MR_TYPE = "MR"
RESPONSE_EXTENSION = "https://medmeta.dev/fhir/StructureDefinition/treatment-response"
OUTCOME_CODES = {"response": "response", "no_response": "no_response", "unknown": "unknown"}
DEFAULT_SITE = "fhir"


def parse_fhir_json(data: bytes, site: str = DEFAULT_SITE) -> RawRecords:
    """A Bundle or a single resource."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise Rejected(MALFORMED_JSON, f"not valid JSON{where}") from None
    _check_resource(doc)
    records = RawRecords(site=site)
    if doc["resourceType"] == "Bundle":
        entries = doc.get("entry") or []
        resources = []
        for i, entry in enumerate(entries):
            location = f"entry {i + 1}"
            try:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                _check_resource(resource)
            except Rejected as error:
                records.reject(error, location)
                continue
            resources.append((location, entry.get("fullUrl"), resource))
        _read_resources(records, resources, site)
    else:
        _read_resources(records, [("resource", None, doc)], site)
    return records


def parse_fhir_ndjson(data: bytes, site: str = DEFAULT_SITE) -> RawRecords:
    """Bulk export: one resource per line; a bad line is rejected, the others kept."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Rejected(MALFORMED_JSON, "NDJSON must be UTF-8 text") from None
    resources, rejects = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        location = f"line {n}"
        try:
            try:
                resource = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Rejected(MALFORMED_JSON, f"not valid JSON at column {exc.colno}") from None
            _check_resource(resource)
        except Rejected as error:
            error.location = location
            rejects.append(error)
            continue
        resources.append((location, None, resource))
    records = RawRecords(site=site, rejects=rejects)
    _read_resources(records, resources, site)
    return records


def _check_resource(resource) -> None:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise Rejected(NOT_FHIR, "JSON without a resourceType is not a FHIR resource")
    if resource["resourceType"] not in R4_RESOURCE_TYPES:
        raise Rejected(UNKNOWN_RESOURCE_TYPE, "resourceType is not a FHIR R4 resource type")


def _read_resources(records: RawRecords, resources: list, site: str) -> None:
    # Patients first, so references within the same file resolve to an MRN right away.
    ordered = sorted(resources, key=lambda r: r[2]["resourceType"] != "Patient")
    for location, full_url, resource in ordered:
        reader = READERS.get(resource["resourceType"])
        if reader is None:
            records.ignored[resource["resourceType"]] += 1
            continue
        try:
            reader(records, resource, full_url, site, location)
        except Rejected as error:
            records.reject(error, location)
        except (AttributeError, TypeError, KeyError, IndexError):
            records.reject(Rejected(INVALID_RECORD, f"{resource['resourceType']} does not have the R4 structure"), location)


def _read_patient(records: RawRecords, res: dict, full_url, site: str, location: str) -> None:
    mrn, issuer = _mrn(res) or (f"{site}:Patient/{res.get('id', location)}", None)
    for ref in filter(None, [f"Patient/{res['id']}" if res.get("id") else None, full_url]):
        records.patient_refs[ref] = (mrn, issuer)
    birth = res.get("birthDate")
    records.add("patients", {
        "mrn": mrn, "issuer": issuer, "location": location,
        "birth_date": _fhir_date(birth, "birthDate") if birth else None,
        "sex": res.get("gender") if res.get("gender") in ("female", "male", "other", "unknown") else "unknown",
    })


def _mrn(res: dict) -> tuple[str, str | None] | None:
    identifiers = [i for i in res.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    for ident in identifiers:
        codings = ((ident.get("type") or {}).get("coding")) or []
        if any(c.get("code") == MR_TYPE for c in codings):
            return str(ident["value"]).strip(), ident.get("system")
    return (str(identifiers[0]["value"]).strip(), identifiers[0].get("system")) if identifiers else None


def _subject(res: dict) -> dict:
    subject = res.get("subject") or {}
    identifier = subject.get("identifier") or {}
    if identifier.get("value"):
        return {"mrn": str(identifier["value"]).strip(), "issuer": identifier.get("system")}
    reference = subject.get("reference")
    if not isinstance(reference, str) or not reference:
        raise Rejected(INVALID_RECORD, f"{res['resourceType']} has no subject")
    if not reference.startswith("urn:"):
        reference = "/".join(reference.rstrip("/").split("/")[-2:])  # absolute URL -> Patient/<id>
    return {"ref": reference}


def _coding(res: dict, element: str, system: str, what: str) -> str:
    for coding in (res.get(element) or {}).get("coding") or []:
        if coding.get("system") == system and coding.get("code"):
            return str(coding["code"]).strip()
    raise Rejected(INVALID_RECORD, f"{res['resourceType']} has no {what} code")


def _read_condition(records: RawRecords, res: dict, full_url, site: str, location: str) -> None:
    onset = res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start") or res.get("recordedDate")
    records.add("conditions", {
        **_subject(res), "location": location,
        "system": ICD10CM, "code": _coding(res, "code", ICD10CM, "ICD-10-CM"), "display": None,
        "onset_date": _fhir_date(onset, "onset") if onset else None,
    })


def _read_observation(records: RawRecords, res: dict, full_url, site: str, location: str) -> None:
    if res.get("status") == "entered-in-error":
        records.ignored["Observation (entered-in-error)"] += 1
        return
    quantity = res.get("valueQuantity")
    value = quantity.get("value") if isinstance(quantity, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(NON_NUMERIC_VALUE, "Observation value is not a number (valueQuantity.value)")
    effective = res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start") or res.get("issued")
    records.add("observations", {
        **_subject(res), "location": location,
        "system": LOINC, "code": _coding(res, "code", LOINC, "LOINC"), "display": None,
        "value": float(value), "comparator": None, "unit": str(quantity.get("code") or quantity.get("unit") or ""),
        "effective_date": _fhir_date(effective, "effective") if effective else None,
    })


def _read_medication_statement(records: RawRecords, res: dict, full_url, site: str, location: str) -> None:
    start = (res.get("effectivePeriod") or {}).get("start") or res.get("effectiveDateTime")
    outcome = "unknown"
    for ext in res.get("extension") or []:
        if ext.get("url") == RESPONSE_EXTENSION:
            outcome = OUTCOME_CODES.get(ext.get("valueCode"))
            if outcome is None:
                raise Rejected(INVALID_RECORD, "treatment-response extension has a code outside its value set")
    records.add("medication_exposures", {
        **_subject(res), "location": location,
        "drug_system": ATC, "drug_code": _coding(res, "medicationCodeableConcept", ATC, "ATC"), "drug_display": None,
        "start_date": _fhir_date(start, "effective") if start else None,
        "outcome": outcome,
    })


def _fhir_date(value, element: str) -> date:
    """FHIR date / dateTime, partial dates (YYYY, YYYY-MM) to their first day."""
    text = str(value)
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text[:10])
    except ValueError:
        raise Rejected(INVALID_RECORD, f"{element} is not a valid FHIR date") from None


READERS = {
    "Patient": _read_patient,
    "Condition": _read_condition,
    "Observation": _read_observation,
    "MedicationStatement": _read_medication_statement,
}
