"""``RawRecords`` to de-identified staging tables: the only place MRNs and true dates end.

MRNs (with their issuer) become keyed pseudonyms, birth dates become ages, every other date is
shifted by the patient's keyed offset. A row known only by a reference to a patient in another
file keeps an opaque ``patient_ref`` key and is shifted by that key's offset for now;
``medmeta.ingest.consolidate`` re-keys it once the patient is known. Likewise a medication known
only by a reference to a Medication in another file keeps a ``medication_ref`` key.

What a staging table holds beyond the canonical columns (``staging_schema``): ``patient_ref``,
``location`` (where in the file: used when consolidation rejects the row) and, for
medication exposures, ``medication_ref``. Values stay in the unit the source wrote:
consolidation converts them (``medmeta.ingest.units_step``), once per distinct code and unit.

Only vocabulary enters a part as text (``medmeta.records.vocabulary``): a row whose code or code
system fails its vocabulary is rejected here (``invalid_code``, the value described by a keyed
hash, never quoted), and the free text a row may carry until consolidation decides on it (a
coding's display, a unit as written) is sealed (``medmeta.records.sealed``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import date, timedelta

import pyarrow as pa

from medmeta import schema
from medmeta.errors import FUTURE_BIRTH_DATE, IMPLAUSIBLE_BIRTH_DATE, INVALID_CODE, Rejected
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.raw import RawRecords
from medmeta.records.masking import masked
from medmeta.records.sealed import Sealer
from medmeta.records.vocabulary import (
    code_fits,
    system_fits,
    vocabulary_code_fits,
    vocabulary_system_fits,
)
from medmeta.terminology.systems import known_system

MAX_REPORTED_AGE = 90  # HIPAA safe harbour: older ages are reported as 90
MAX_PLAUSIBLE_AGE = 120  # an older birth date is a data error, not a very old patient
DATE_COLUMNS = {"onset_date", "effective_date", "start_date"}
PATIENT_REFS = pa.schema([("patient_ref", pa.string()), ("patient_id", pa.string())])
MEDICATION_REFS = pa.schema([
    ("medication_ref", pa.string()), ("drug_system", pa.string()), ("drug_code", pa.string()),
    ("drug_display", pa.string()),
])
# An OMOP CONCEPT table as a part stages it (medmeta.records.omop_concepts resolves rows through it);
# here, not there, so a worker that meets only FHIR never imports pandas.
CONCEPTS = pa.schema([
    ("concept_id", pa.int64()), ("system", pa.string()), ("code", pa.string()), ("display", pa.string()),
])
_EXTRA = {
    "patients": [("patient_ref", pa.string()), ("location", pa.string())],
    "conditions": [("patient_ref", pa.string()), ("location", pa.string())],
    "observations": [("patient_ref", pa.string()), ("location", pa.string())],
    "medication_exposures": [("patient_ref", pa.string()), ("location", pa.string()),
                             ("medication_ref", pa.string())],
}
# Row fields a parser sets that are copied as they are (dates are shifted, identity is replaced).
_COPIED = {
    "conditions": ("system", "code", "display"),
    "observations": ("system", "code", "display", "value", "comparator", "value_system", "value_code", "unit"),
    "medication_exposures": ("drug_system", "drug_code", "drug_display", "outcome"),
}
# (system, code) field pairs each row's vocabulary check covers, and the free-text fields sealed until consolidation.
CODED_FIELDS = {
    "conditions": (("system", "code"),),
    "observations": (("system", "code"), ("value_system", "value_code")),
    "medication_exposures": (("drug_system", "drug_code"),),
}
SEALED_FIELDS = {"conditions": ("display",), "observations": ("display", "unit"),
                 "medication_exposures": ("drug_display",)}


@functools.cache
def staging_schema(table: str) -> pa.Schema:
    """The canonical schema plus the staging columns (``patient_ref`` is null once resolved)."""
    out = schema.TABLES[table]
    for name, kind in _EXTRA[table]:
        out = out.append(pa.field(name, kind))
    return out


@dataclass
class StagedRecords:
    tables: dict[str, pa.Table]
    patient_refs: pa.Table
    medication_refs: pa.Table
    rejects: list[Rejected] = field(default_factory=list)
    concepts: list[dict] = field(default_factory=list)  # the file's vocabulary rows whose codes fit their system

    @property
    def row_count(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


@lru_cache(maxsize=65_536)
def _vocabulary_failure(system: str | None, code: str, table: bool = False) -> str | None:
    """Why (system, code) can not be stored as text, or None when it can (once per distinct pair);
    ``table``: the pair comes from a vocabulary table, whose systems may be OMOP vocabulary_ids."""
    if system is not None and not (vocabulary_system_fits(system) if table else system_fits(system)):
        return "system"
    if not (vocabulary_code_fits(system, code) if table else code_fits(system, code)):
        return "code"
    return None


@dataclass(frozen=True)
class Canonicalizer:
    pseudo: Pseudonymizer
    age_reference_date: date
    today: date
    sealer: Sealer = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "sealer", Sealer(self.pseudo))

    def vocabulary_error(self, row: dict, pairs: tuple[tuple[str, str], ...], what: str,
                         table: bool = False) -> Rejected | None:
        """An ``invalid_code`` rejection for the first (system, code) of ``row`` outside its vocabulary,
        the value described by a keyed hash; None when every code fits. ``table``: a vocabulary table's row."""
        for system_field, code_field in pairs:
            system, code = row.get(system_field), row.get(code_field)
            if code is None:
                continue
            failed = _vocabulary_failure(system, code, table)
            if failed == "system":
                return Rejected(INVALID_CODE, f"the {what}'s {system_field} is neither a known code system nor a URI "
                                              f"({masked(system, self.pseudo)})")
            if failed == "code":
                known = known_system(system)
                kind = f"a well-formed {known.title} code" if known else "a code (a local system's codes hold no spaces or commas)"
                return Rejected(INVALID_CODE, f"the {what}'s {code_field} is not {kind} ({masked(code, self.pseudo)})")
        return None

    def __call__(self, raw: RawRecords, source: str) -> StagedRecords:
        rejects = list(raw.rejects)
        tables = {}
        identities: dict[tuple, tuple] = {}  # one HMAC per patient and file, not per row
        for table, rows in raw.rows.items():
            tables[table] = self._table(table, rows, raw, source, identities, rejects)
        refs = []
        for ref, mrn in sorted(raw.patient_refs.items()):
            if ref.startswith("Patient/") or ref.startswith("urn:"):
                mrn, issuer = mrn if isinstance(mrn, tuple) else (mrn, None)
                refs.append({"patient_ref": self.pseudo.reference_key(raw.site, ref),
                             "patient_id": self.pseudo.patient_id(mrn, issuer)})
        medications = []
        for ref, (system, code, display) in sorted(getattr(raw, "medications", {}).items()):
            error = self.vocabulary_error({"drug_system": system, "drug_code": code},
                                          CODED_FIELDS["medication_exposures"], "Medication")
            if error is not None:  # the exposures naming it stay unresolved and are quarantined at consolidation
                error.location = "a Medication resource"
                rejects.append(error)
                continue
            medications.append({"medication_ref": self.pseudo.reference_key(raw.site, ref), "drug_system": system,
                                "drug_code": code, "drug_display": self.sealer.seal(display)})
        concepts = []
        for concept in raw.concepts:
            error = self.vocabulary_error(concept, (("system", "code"),), "concept", table=True)
            if error is not None:
                error.location = f"concept_id {concept.get('concept_id')}"
                rejects.append(error)
            else:
                concepts.append(concept)
        return StagedRecords(tables, pa.Table.from_pylist(refs, schema=PATIENT_REFS),
                             pa.Table.from_pylist(medications, schema=MEDICATION_REFS), rejects, concepts)

    def _table(self, table: str, rows: list[dict], raw: RawRecords, source: str, identities: dict,
               rejects: list[Rejected]) -> pa.Table:
        """One staging table, built column by column (rows in the parser's order); a row that is
        refused (an impossible birth date) goes to ``rejects`` with its location."""
        table_schema = staging_schema(table)
        columns: dict[str, list] = {name: [] for name in table_schema.names}
        patient_ids, patient_refs, locations = columns["patient_id"], columns["patient_ref"], columns["location"]
        offsets = []
        if table == "patients":
            sexes, ages = columns["sex"], columns["age_years"]
            for row in rows:
                patient_id, patient_ref, _ = self._identity(row, raw, identities)
                try:
                    age = self._age(row.get("birth_date"))
                except Rejected as error:
                    error.location = error.location or row.get("location")
                    rejects.append(error)
                    continue
                patient_ids.append(patient_id)
                patient_refs.append(patient_ref)
                locations.append(row.get("location"))
                sexes.append(row.get("sex") if row.get("sex") in schema.SEXES else "unknown")
                ages.append(age)
        else:
            copied = [(columns[name], name) for name in _COPIED[table]]
            record_ids = columns["record_id"]
            reference_key, site = self.pseudo.reference_key, raw.site
            coded, what = CODED_FIELDS[table], table.rstrip("s").replace("_", " ")
            kept = []
            for row in rows:
                error = self.vocabulary_error(row, coded, what)
                if error is not None:
                    error.location = error.location or row.get("location")
                    rejects.append(error)
                    continue
                kept.append(row)
            rows = kept
            for row in rows:
                patient_id, patient_ref, offset = self._identity(row, raw, identities)
                patient_ids.append(patient_id)
                patient_refs.append(patient_ref)
                locations.append(row.get("location"))
                offsets.append(offset)
                for column, name in copied:
                    column.append(row.get(name))
                record_ref = row.get("record_ref")
                record_ids.append(reference_key(site, record_ref) if record_ref else None)
            for name in DATE_COLUMNS.intersection(columns):
                columns[name] = [value + timedelta(days=offset) if value else None
                                 for value, offset in zip((row.get(name) for row in rows), offsets)]
            if table == "observations":
                columns["censored"] = [comparator is not None for comparator in columns["comparator"]]
            elif table == "medication_exposures":
                columns["outcome"] = [outcome if outcome in schema.OUTCOMES else "unknown" for outcome in columns["outcome"]]
                columns["medication_ref"] = [reference_key(site, row["medication_ref"]) if row.get("medication_ref")
                                             else None for row in rows]
            for name in SEALED_FIELDS[table]:
                columns[name] = [self.sealer.seal(value) for value in columns[name]]
        count = len(patient_ids)
        columns["site"] = [raw.site] * count
        columns["source"] = [source] * count
        for name, values in columns.items():
            if len(values) != count:  # a canonical column this table's parser does not set
                columns[name] = [None] * count
        return pa.Table.from_pydict(columns, schema=table_schema)

    def _identity(self, row: dict, raw: RawRecords, identities: dict) -> tuple:
        """(patient_id, patient_ref, date offset) of the row's patient."""
        mrn = row.get("mrn")
        if mrn:
            key = ("mrn", mrn, row.get("issuer"))
        else:
            known = raw.patient_refs.get(row.get("ref", ""))
            if known:
                mrn, issuer = known if isinstance(known, tuple) else (known, None)
                key = ("mrn", mrn, issuer)
            else:
                key = ("ref", row["ref"])
        found = identities.get(key)
        if found is None:
            if key[0] == "mrn":
                patient_id = self.pseudo.patient_id(key[1], key[2])
                found = (patient_id, None, self.pseudo.offset_for_token(patient_id))
            else:
                patient_ref = self.pseudo.reference_key(raw.site, key[1])
                found = (None, patient_ref, self.pseudo.offset_for_token(patient_ref))
            identities[key] = found
        return found

    def _age(self, birth: date | None) -> int | None:
        """Age at the reference date, capped at 90; an impossible birth date is refused before the cap."""
        if birth is None:
            return None
        if birth > self.today:
            raise Rejected(FUTURE_BIRTH_DATE, "the birth date is in the future")
        ref = self.age_reference_date
        years = ref.year - birth.year - ((ref.month, ref.day) < (birth.month, birth.day))
        if years > MAX_PLAUSIBLE_AGE:
            raise Rejected(IMPLAUSIBLE_BIRTH_DATE, f"the birth date makes the patient older than {MAX_PLAUSIBLE_AGE}")
        return min(max(years, 0), MAX_REPORTED_AGE)
