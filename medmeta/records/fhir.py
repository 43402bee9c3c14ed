"""FHIR R4 as hospitals and Synthea export it (a Bundle, one resource, or bulk NDJSON) to ``RawRecords``.

Read: Patient (MRN and its issuer, birthDate, gender); Condition (every coding, any code system);
Observation (quantities with their comparator, integers, codeable concepts, booleans, and each
component as its own observation); MedicationRequest, MedicationStatement and
MedicationAdministration (a codeable concept, or a ``medicationReference`` resolved to a contained,
in-file or, at consolidation, another file's Medication); Medication (to resolve those references).
Names, telecoms, addresses, notes, free text and narrative are never read.

References are normalised before they are stored: relative (``Patient/1``), absolute
(``https://x/fhir/Patient/1``) and versioned (``Patient/1/_history/2``) forms all become
``Patient/1``; ``urn:uuid:`` references stay as they are and resolve through the Bundle's
``fullUrl``s. A reference to a Patient of the same file is resolved right away (the row gets
``mrn`` + ``issuer``); any other keeps ``ref`` for consolidation. The site is the caller's (the
settings or landing folder), never ``meta.source``.

Every resource of a file ends in exactly one place: ``read`` (it gave rows, or served another:
a Patient, a Medication, a panel whose components gave rows), ``ignored`` (a type medmeta has
no use for), ``excluded`` (a named rule, e.g. "Observation: status cancelled"), or a reject with
its location ("entry 3", "line 7"). Rules named "Observation component: ..." count components of
an Observation that was read, not resources. A bad entry or line never loses the rest of the file.
"""

from __future__ import annotations

import json
import math
from datetime import date
from urllib.parse import unquote

from medmeta.errors import (
    INVALID_RECORD,
    JSON_TOO_DEEP,
    MALFORMED_JSON,
    NON_NUMERIC_VALUE,
    NOT_FHIR,
    NOT_FINITE,
    NUMBER_TOO_LARGE,
    UNKNOWN_RESOURCE_TYPE,
    Rejected,
)
from medmeta.records.fhir_types import R4_RESOURCE_TYPES
from medmeta.records.raw import RawRecords
from medmeta.terminology.systems import ATC, FHIR_BOOLEAN, LOINC, NDC, RXNORM, SNOMED, canonical_system

try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # orjson is a dependency; plain json keeps medmeta working without it
    _fast_loads = json.loads

DEFAULT_SITE = "fhir"
RESPONSE_EXTENSION = "https://medmeta.dev/fhir/StructureDefinition/treatment-response"
OUTCOME_CODES = frozenset({"response", "no_response", "unknown"})
SEXES = frozenset({"female", "male", "other", "unknown"})
MR_TYPE_SYSTEMS = frozenset({None, "http://terminology.hl7.org/CodeSystem/v2-0203", "http://hl7.org/fhir/v2/0203",
                             "urn:oid:2.16.840.1.113883.18.108"})
DRUG_SYSTEMS = (RXNORM, ATC, NDC, SNOMED)  # a medication's drug: its coding in the first of these it has
COMPARATORS = frozenset({"<", "<=", ">", ">="})
# Observation.value[x] (R4) types not read; each excludes an Observation under its own rule name.
UNREAD_VALUE_TYPES = ("valueString", "valueSampledData", "valueRange", "valueRatio", "valueTime", "valueDateTime",
                      "valuePeriod")
EXCLUDED_CONDITION_VERIFICATION = frozenset({"refuted", "entered-in-error"})
EXCLUDED_OBSERVATION_STATUS = frozenset({"cancelled", "entered-in-error"})
EXCLUDED_MEDICATION_STATUS = {  # a record of no exposure, or of none at all
    "MedicationRequest": frozenset({"entered-in-error"}),
    "MedicationStatement": frozenset({"entered-in-error", "not-taken"}),
    "MedicationAdministration": frozenset({"entered-in-error", "not-done"}),
}
_UTF8_BOM = b"\xef\xbb\xbf"
MAX_INTEGER_DIGITS = 4300  # Python's default int_max_str_digits, fixed here so the environment can not move it
FHIR_INTEGER_RANGE = (-2**31, 2**31 - 1)  # R4 integer: a signed 32-bit integer


def parse_fhir_json(data: bytes, site: str = DEFAULT_SITE) -> RawRecords:
    """A Bundle, a JSON array of resources, or one resource, read for ``site``.

    Raises ``Rejected`` when the file as a whole is not FHIR JSON; a bad entry is rejected alone.
    """
    doc = _load_document(data)
    records = RawRecords(site=site)
    reader = _FileReader(records)
    if isinstance(doc, list):
        reader.read([(f"item {i}", None, resource) for i, resource in enumerate(doc, start=1)])
        return records
    _check_resource(doc)
    if doc["resourceType"] == "Bundle":
        reader.read(_bundle_entries(doc, "entry ", records))
    else:
        reader.read([("resource", None, doc)])
    return records


def parse_fhir_ndjson(data: bytes, site: str = DEFAULT_SITE) -> RawRecords:
    """Bulk export NDJSON, one resource per line, read for ``site``; a bad line is rejected alone."""
    records = RawRecords(site=site)
    resources = []
    for n, line in enumerate(data.removeprefix(_UTF8_BOM).split(b"\n"), start=1):
        if not line.strip():
            continue
        location = f"line {n}"
        try:
            resource = _load_line(line)
            if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
                resources.extend(_bundle_entries(resource, f"{location} entry ", records))
                continue
        except Rejected as error:
            records.reject(error, location)
            continue
        resources.append((location, None, resource))
    _FileReader(records).read(resources)
    return records


# ---------------------------------------------------------------------------------------------
# JSON


def _load_document(data: bytes):
    return _load_json(data.removeprefix(_UTF8_BOM), "file")


def _load_line(line: bytes):
    return _load_json(line, "line")


def _load_json(data: bytes, unit: str):
    """One JSON text, a whole file (``unit`` "file") or an NDJSON line ("line"); ``Rejected`` with a
    named reason when it can not be read: ``json_too_deep``, ``number_too_large``, ``malformed_json``.

    orjson reads nearly every file. What it refuses is read again by the standard library, which
    accepts NaN / Infinity literals and integers beyond 64 bits (as ints of at most
    ``MAX_INTEGER_DIGITS`` digits, whatever the interpreter's own limit) and says where the text
    broke; a value that is not finite is refused later, by the element that holds it. Nesting beyond
    orjson's limit (1024 levels) is ``json_too_deep`` without a second try, and so is nesting beyond
    the standard library's (the interpreter's recursion limit). Nothing here or after recurses on the
    parsed value.
    """
    try:
        return _fast_loads(data)
    except RecursionError:  # json.loads, when orjson is not installed
        raise _too_deep(unit) from None
    except ValueError as exc:
        if "depth limit" in str(exc):  # orjson's own limit; its messages never quote the data
            raise _too_deep(unit) from None
    try:
        doc = json.loads(data, parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise Rejected(MALFORMED_JSON, f"the {unit} is not UTF-8 text") from None
    except RecursionError:
        raise _too_deep(unit) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if unit == "file" else f"column {exc.colno}"
        raise Rejected(MALFORMED_JSON, f"not valid JSON at {where}") from None
    _check_unicode(doc, unit)
    return doc


def _too_deep(unit: str) -> Rejected:
    return Rejected(JSON_TOO_DEEP, f"the {unit} nests JSON arrays or objects deeper than the parser's limit")


def _bounded_int(text: str) -> int:
    """A JSON integer of at most ``MAX_INTEGER_DIGITS`` digits (the standard library's ``parse_int``)."""
    if len(text) > MAX_INTEGER_DIGITS + 1:  # + 1: a minus sign
        raise Rejected(NUMBER_TOO_LARGE, f"an integer has more than {MAX_INTEGER_DIGITS} digits")
    try:
        return int(text)
    except ValueError:  # the interpreter's int_max_str_digits is set lower than ours
        raise Rejected(NUMBER_TOO_LARGE, "an integer has more digits than Python converts") from None


def _check_unicode(doc, unit: str) -> None:
    """Refuse a string holding an unpaired surrogate escape ("\\ud800"): the standard library reads it,
    orjson and pyarrow do not. Walked with a stack, never recursively."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise Rejected(MALFORMED_JSON, f"the {unit} holds a string with an unpaired UTF-16 surrogate "
                                                   "escape, which is not Unicode text") from None
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _check_resource(resource) -> None:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise Rejected(NOT_FHIR, "JSON without a resourceType is not a FHIR resource")
    if resource["resourceType"] not in R4_RESOURCE_TYPES:
        raise Rejected(UNKNOWN_RESOURCE_TYPE, "resourceType is not a FHIR R4 resource type")


def _bundle_entries(bundle: dict, prefix: str, records: RawRecords) -> list[tuple]:
    """(location, fullUrl, resource) of each entry; an entry without a resource is rejected."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        records.reject(Rejected(INVALID_RECORD, "Bundle.entry is not a list"), prefix.strip())
        return []
    out = []
    for i, entry in enumerate(entries, start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            records.reject(Rejected(INVALID_RECORD, "the Bundle entry holds no resource"), f"{prefix}{i}")
            continue
        full_url = entry.get("fullUrl")
        out.append((f"{prefix}{i}", full_url if isinstance(full_url, str) else None, resource))
    return out


# ---------------------------------------------------------------------------------------------
# References, codings, dates


def normalise_reference(reference: str, resource_type: str) -> str | None:
    """``<resource_type>/<id>`` for a relative, absolute or versioned reference to that type, a
    ``urn:uuid:`` / ``urn:oid:`` reference as it is, None for a reference to another type."""
    reference = reference.strip()
    if reference.startswith("urn:"):
        return reference
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1] and "?" not in parts[-1]:
        return f"{resource_type}/{parts[-1]}"
    return None


def identifier_issuer(identifier: dict) -> str | None:
    """Who assigned an identifier: its system, else its assigner (display, reference, identifier)."""
    system = identifier.get("system")
    if isinstance(system, str) and system.strip():
        return system.strip()
    assigner = identifier.get("assigner")
    if isinstance(assigner, dict):
        for value in (assigner.get("display"), assigner.get("reference"), (assigner.get("identifier") or {}).get("value")):
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def patient_mrn(identifiers) -> tuple[str, str | None] | None:
    """(MRN, issuer): the identifier typed MR (v2-0203) or by text "MRN", else the first with a value."""
    first = None
    for ident in identifiers or ():
        if not isinstance(ident, dict):
            continue
        value = ident.get("value")
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
            continue
        if first is None:
            first = ident
        if _typed_mr(ident.get("type")):
            return str(value).strip(), identifier_issuer(ident)
    return (str(first["value"]).strip(), identifier_issuer(first)) if first is not None else None


def _typed_mr(concept) -> bool:
    if not isinstance(concept, dict):
        return False
    text = concept.get("text")
    if isinstance(text, str) and text.strip().upper() == "MRN":
        return True
    return any(isinstance(c, dict) and c.get("code") == "MR" and c.get("system") in MR_TYPE_SYSTEMS
               for c in concept.get("coding") or ())


_SYSTEMS: dict = {}  # raw system string -> canonical URI, so each spelling is canonicalised once


def _system(raw) -> str | None:
    known = _SYSTEMS.get(raw)
    if known is None:
        if not isinstance(raw, str):
            return None
        known = canonical_system(raw)
        if len(_SYSTEMS) < 10_000:
            _SYSTEMS[raw] = known
    return known


def _codings(concept) -> list[tuple[str, str, str | None]]:
    """(canonical system, code, display) of each coding with both a system and a code."""
    out = []
    if not isinstance(concept, dict):
        return out
    for coding in concept.get("coding") or ():
        code = coding.get("code")
        system = _system(coding.get("system"))
        if system and isinstance(code, str) and code.strip():
            display = coding.get("display")
            out.append((system, code.strip(), display if isinstance(display, str) else None))
    return out


def _drug_coding(concept) -> tuple[str, str, str | None] | None:
    """The coding in the most preferred drug system (``DRUG_SYSTEMS``), else the first coding."""
    codings = _codings(concept)
    if len(codings) > 1:
        for system in DRUG_SYSTEMS:
            for coding in codings:
                if coding[0] == system:
                    return coding
    return codings[0] if codings else None


def _fhir_date(value, element: str) -> date | None:
    """A FHIR date / dateTime / instant as its date; partial dates (YYYY, YYYY-MM) to their first day."""
    if value is None:
        return None
    try:
        if len(value) >= 10:
            return date.fromisoformat(value[:10])
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7 and value[4] == "-":
            return date(int(value[:4]), int(value[5:7]), 1)
    except (ValueError, TypeError):
        pass
    raise Rejected(INVALID_RECORD, f"{element} is not a valid FHIR date")


class _Excluded(Exception):
    """A resource left out by a named rule."""

    def __init__(self, rule: str):
        self.rule = rule


# ---------------------------------------------------------------------------------------------
# Resources


class _FileReader:
    """Reads the resources of one file into its ``RawRecords``: Patients and Medications first, so
    references to them within the file resolve, then everything else."""

    def __init__(self, records: RawRecords):
        self.records = records
        self.patients = records.patient_refs  # normalised ref -> (mrn, issuer)
        self.medications: dict[str, tuple | None] = {}  # normalised ref -> drug coding (None: no coding)
        self.readers = {
            "Condition": ("conditions", self._condition),
            "Observation": ("observations", self._observation),
            "MedicationRequest": ("medication_exposures", self._medication_use),
            "MedicationStatement": ("medication_exposures", self._medication_use),
            "MedicationAdministration": ("medication_exposures", self._medication_use),
        }

    def read(self, resources: list[tuple]) -> None:
        records = self.records
        rest = []
        for item in resources:
            location, full_url, resource = item
            try:
                _check_resource(resource)
                kind = resource["resourceType"]
                if kind == "Patient":
                    self._patient(resource, full_url, location)
                elif kind == "Medication":
                    self._medication(resource, full_url)
                else:
                    rest.append(item)
                    continue
                records.read[kind] += 1
            except Rejected as error:
                records.reject(error, location)
            except (AttributeError, TypeError, KeyError, IndexError, ValueError):
                records.reject(_not_r4(resource), location)
        for location, full_url, resource in rest:
            kind = resource["resourceType"]
            reader = self.readers.get(kind)
            if reader is None:
                records.ignored[kind] += 1
                continue
            table, read = reader
            try:
                rows = read(resource, location)
            except _Excluded as excluded:
                records.excluded[excluded.rule] += 1
                continue
            except Rejected as error:
                records.reject(error, location)
                continue
            except (AttributeError, TypeError, KeyError, IndexError, ValueError):
                records.reject(_not_r4(resource), location)
                continue
            rid = resource.get("id")
            record_ref = f"{kind}/{rid}" if isinstance(rid, str) and rid else full_url
            for row in rows:  # the resource's identity: two resources alike stay two facts
                row["record_ref"] = record_ref
            records.rows.setdefault(table, []).extend(rows)
            records.read[kind] += 1

    # -- Patient and Medication: read first, referred to by the others

    def _patient(self, res: dict, full_url: str | None, location: str) -> None:
        rid = res.get("id")
        mrn = patient_mrn(res.get("identifier"))
        if mrn is None:
            if not isinstance(rid, str) or not rid:
                raise Rejected(INVALID_RECORD, "Patient has neither an identifier nor an id")
            mrn = (f"{self.records.site}:Patient/{rid}", None)
        for ref in {f"Patient/{rid}" if isinstance(rid, str) and rid else None,
                    normalise_reference(full_url, "Patient") if full_url else None} - {None}:
            self.records.patient_refs[ref] = mrn
        gender = res.get("gender")
        gender = gender.lower() if isinstance(gender, str) else None
        self.records.rows.setdefault("patients", []).append({
            "mrn": mrn[0], "issuer": mrn[1], "location": location,
            "birth_date": _fhir_date(res.get("birthDate"), "birthDate"),
            "sex": gender if gender in SEXES else "unknown",
        })

    def _medication(self, res: dict, full_url: str | None) -> None:
        drug = _drug_coding(res.get("code"))
        refs = {f"Medication/{res['id']}" if isinstance(res.get("id"), str) and res["id"] else None,
                normalise_reference(full_url, "Medication") if full_url else None} - {None}
        for ref in refs:
            self.medications[ref] = drug
            if drug is not None:
                self.records.medications[ref] = drug
        if drug is None:
            raise Rejected(INVALID_RECORD, "Medication has no coding with a system and a code")

    # -- the subject

    def _subject(self, res: dict) -> dict:
        """{"mrn", "issuer"} when the patient is known here, else {"ref"}; rejects a non-Patient subject."""
        subject = res.get("subject")
        if not isinstance(subject, dict):
            raise Rejected(INVALID_RECORD, f"{res['resourceType']} has no subject")
        reference = subject.get("reference")
        if isinstance(reference, str) and reference.strip():
            ref = normalise_reference(reference, "Patient")
            if ref is not None:
                known = self.patients.get(ref)
                return {"mrn": known[0], "issuer": known[1]} if known else {"ref": ref}
            if reference.startswith("Patient?identifier="):  # a conditional reference: system|value
                system, _, value = unquote(reference[len("Patient?identifier="):]).rpartition("|")
                if value.strip():
                    return {"mrn": value.strip(), "issuer": system.strip() or None}
            if not isinstance(subject.get("identifier"), dict):
                raise Rejected(INVALID_RECORD, f"{res['resourceType']}.subject is not a reference to a Patient")
        identifier = subject.get("identifier")
        if isinstance(identifier, dict):
            mrn = patient_mrn([identifier])
            if mrn is not None:
                return {"mrn": mrn[0], "issuer": mrn[1]}
        raise Rejected(INVALID_RECORD, f"{res['resourceType']} has no subject")

    # -- Condition

    def _condition(self, res: dict, location: str) -> list[dict]:
        verification = res.get("verificationStatus")
        if verification:
            for coding in verification.get("coding") or ():
                if coding.get("code") in EXCLUDED_CONDITION_VERIFICATION:
                    raise _Excluded(f"Condition: verificationStatus {coding['code']}")
        codings = _codings(res.get("code"))
        if not codings:
            raise Rejected(INVALID_RECORD, "Condition has no coding with a system and a code")
        onset = (res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start") or res.get("recordedDate"))
        subject = self._subject(res)
        onset_date = _fhir_date(onset, "onset") if onset else None
        rows, systems = [], set()
        for system, code, display in codings:
            if system in systems:
                continue
            systems.add(system)
            rows.append({**subject, "location": location, "system": system, "code": code, "display": display,
                         "onset_date": onset_date})
        return rows

    # -- Observation

    def _observation(self, res: dict, location: str) -> list[dict]:
        status = res.get("status")
        if status in EXCLUDED_OBSERVATION_STATUS:
            raise _Excluded(f"Observation: status {status}")
        effective = (res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start")
                     or res.get("effectiveInstant") or res.get("issued"))
        effective_date = _fhir_date(effective, "effective") if effective else None
        subject = self._subject(res)
        rows = []
        rule = _observation_value(res)
        if rule is None:
            rows.append(self._observation_row(res, subject, location, effective_date, "Observation"))
        components = res.get("component")
        if components:
            for component in components:
                component_rule = _observation_value(component)
                if component_rule is None:
                    rows.append(self._observation_row(component, subject, location, effective_date,
                                                      "Observation component"))
                else:
                    self.records.excluded[f"Observation component: {component_rule}"] += 1
        if rule is None or rule == "no value" and rows:  # a panel without a value of its own: its components
            return rows
        if not rows:
            raise _Excluded(f"Observation: {rule}")
        self.records.excluded[f"Observation component: the panel's {rule}"] += 1  # its components were read
        return rows

    def _observation_row(self, element: dict, subject: dict, location: str, effective_date, what: str) -> dict:
        codings = _codings(element.get("code"))
        if not codings:
            raise Rejected(INVALID_RECORD, f"{what} has no coding with a system and a code")
        coded = next((c for c in codings if c[0] == LOINC), codings[0])
        row = {**subject, "location": location, "system": coded[0], "code": coded[1], "display": coded[2],
               "effective_date": effective_date, "value": None, "unit": None, "comparator": None,
               "value_system": None, "value_code": None}
        quantity = element.get("valueQuantity")
        if quantity is not None:
            value = _finite_number(quantity.get("value"), f"{what} value", "valueQuantity.value")
            comparator = quantity.get("comparator")
            if comparator is not None and comparator not in COMPARATORS:
                raise Rejected(INVALID_RECORD, f"{what} valueQuantity.comparator is not an R4 comparator")
            unit = quantity.get("code") or quantity.get("unit")
            row["value"], row["unit"], row["comparator"] = value, unit if isinstance(unit, str) else None, comparator
            return row
        if "valueCodeableConcept" in element:
            row["value_system"], row["value_code"], _ = _codings(element["valueCodeableConcept"])[0]
            return row
        if "valueBoolean" in element:
            value = element["valueBoolean"]
            if not isinstance(value, bool):
                raise Rejected(INVALID_RECORD, f"{what} valueBoolean is not a boolean")
            row["value_system"], row["value_code"] = FHIR_BOOLEAN, "true" if value else "false"
            return row
        row["value"] = float(_fhir_integer(element["valueInteger"], what))
        return row

    # -- MedicationRequest, MedicationStatement, MedicationAdministration

    def _medication_use(self, res: dict, location: str) -> list[dict]:
        kind = res["resourceType"]
        status = res.get("status")
        if status in EXCLUDED_MEDICATION_STATUS[kind]:
            raise _Excluded(f"{kind}: status {status}")
        if res.get("doNotPerform") is True:
            raise _Excluded(f"{kind}: doNotPerform")
        drug, medication_ref = self._drug(res)
        outcome = "unknown"
        for ext in res.get("extension") or ():
            if ext.get("url") == RESPONSE_EXTENSION:
                outcome = ext.get("valueCode")
                if outcome not in OUTCOME_CODES:
                    raise Rejected(INVALID_RECORD, "treatment-response extension has a code outside its value set")
        start = (res.get("authoredOn") or (res.get("effectivePeriod") or {}).get("start")
                 or res.get("effectiveDateTime"))
        row = {**self._subject(res), "location": location,
               "start_date": _fhir_date(start, "start") if start else None, "outcome": outcome}
        if drug is not None:
            row["drug_system"], row["drug_code"], row["drug_display"] = drug
        else:
            row["medication_ref"] = medication_ref
        return [row]

    def _drug(self, res: dict) -> tuple[tuple | None, str | None]:
        """(drug coding, None) when the medication is known here, (None, reference) when it is in
        another file of the export."""
        kind = res["resourceType"]
        concept = res.get("medicationCodeableConcept")
        if concept is not None:
            drug = _drug_coding(concept)
            if drug is None:
                raise _Excluded(f"{kind}: medication without a coding")
            return drug, None
        reference = (res.get("medicationReference") or {}).get("reference")
        if not isinstance(reference, str) or not reference.strip():
            raise Rejected(INVALID_RECORD, f"{kind} names no medication (medication[x])")
        reference = reference.strip()
        if reference.startswith("#") or "/" not in reference and not reference.startswith("urn:"):
            return self._contained_medication(res, reference.removeprefix("#")), None
        ref = normalise_reference(reference, "Medication")
        if ref is None:
            raise Rejected(INVALID_RECORD, f"{kind}.medicationReference is not a reference to a Medication")
        if ref in self.medications:
            drug = self.medications[ref]
            if drug is None:
                raise Rejected(INVALID_RECORD, f"{kind}.medicationReference names a Medication without a coding")
            return drug, None
        return None, ref

    @staticmethod
    def _contained_medication(res: dict, local_id: str) -> tuple:
        for contained in res.get("contained") or ():
            if contained.get("id") == local_id and contained.get("resourceType") == "Medication":
                drug = _drug_coding(contained.get("code"))
                if drug is None:
                    raise Rejected(INVALID_RECORD, "the contained Medication has no coding with a system and a code")
                return drug
        raise Rejected(INVALID_RECORD, f"{res['resourceType']}.medicationReference names no contained Medication")


def _finite_number(value, what: str, element: str) -> float:
    """A FHIR decimal as a finite float: ``non_numeric_value`` for anything but a JSON number,
    ``number_too_large`` beyond a float's range, ``not_finite`` for infinity and NaN (as the CSV path)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(NON_NUMERIC_VALUE, f"{what} is not a number ({element})")
    try:
        number = float(value)
    except OverflowError:  # an integer literal beyond 1.8e308
        raise Rejected(NUMBER_TOO_LARGE, f"{what} is beyond the range of a 64-bit float ({element})") from None
    if not math.isfinite(number):
        raise Rejected(NOT_FINITE, f"{what} is not a finite number ({element})")
    return number


def _fhir_integer(value, what: str) -> int:
    """An R4 integer: a JSON integer within 32 bits (orjson reads one beyond 64 bits as a float)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        raise Rejected(NUMBER_TOO_LARGE, f"{what} valueInteger is beyond the range of an R4 integer")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(NON_NUMERIC_VALUE, f"{what} valueInteger is not an integer")
    if not FHIR_INTEGER_RANGE[0] <= value <= FHIR_INTEGER_RANGE[1]:
        raise Rejected(NUMBER_TOO_LARGE, f"{what} valueInteger is beyond the range of an R4 integer")
    return value


def _observation_value(element: dict) -> str | None:
    """None when the element carries a value medmeta reads, else the rule that leaves it out."""
    quantity = element.get("valueQuantity")
    if quantity is not None:
        if not isinstance(quantity, dict) or quantity.get("value") is None:
            return "valueQuantity without a value"
        return "comparator ad" if quantity.get("comparator") == "ad" else None
    if "valueCodeableConcept" in element:
        return None if _codings(element["valueCodeableConcept"]) else "valueCodeableConcept without a coding"
    if "valueBoolean" in element or "valueInteger" in element:
        return None
    for key in UNREAD_VALUE_TYPES:
        if key in element:
            return key  # never stored (free text, waveforms, ranges, ...)
    return "no value"


def _not_r4(resource) -> Rejected:
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return Rejected(INVALID_RECORD, f"{kind if isinstance(kind, str) else 'the resource'} does not have the R4 structure")
