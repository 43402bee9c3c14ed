"""``RawRecords`` to canonical, de-identified tables: the only place MRNs and true dates end.

MRNs become keyed pseudonyms, birth dates become ages, every other date is shifted by the
patient's keyed offset, lab values go to their canonical unit. A row known only by a FHIR
reference to a patient in another file keeps an opaque ``patient_ref`` key and is shifted by
that key's offset for now; ``medmeta.ingest.consolidate`` re-keys it once the patient is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import pyarrow as pa

from medmeta import schema
from medmeta.errors import FUTURE_BIRTH_DATE, Rejected
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.raw import RawRecords
from medmeta.records.units import UnitConverter

MAX_REPORTED_AGE = 90  # HIPAA safe harbour: older ages are reported as 90
DATE_COLUMNS = {"onset_date", "effective_date", "start_date"}
PATIENT_REFS = pa.schema([("patient_ref", pa.string()), ("patient_id", pa.string())])


def staging_schema(table: str) -> pa.Schema:
    """The canonical schema plus the unresolved reference key (null once resolved)."""
    return schema.TABLES[table].append(pa.field("patient_ref", pa.string()))


@dataclass
class StagedRecords:
    tables: dict[str, pa.Table]
    patient_refs: pa.Table
    rejects: list[Rejected] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


@dataclass(frozen=True)
class Canonicalizer:
    pseudo: Pseudonymizer
    units: UnitConverter
    age_reference_date: date
    today: date

    def __call__(self, raw: RawRecords, source: str) -> StagedRecords:
        rejects = list(raw.rejects)
        tables = {}
        for table, rows in raw.rows.items():
            out = []
            for row in rows:
                try:
                    out.append(self._row(table, row, raw, source))
                except Rejected as error:
                    error.location = error.location or row.get("location")
                    rejects.append(error)
            tables[table] = pa.Table.from_pylist(out, schema=staging_schema(table))
        refs = [
            {"patient_ref": self.pseudo.reference_key(raw.site, ref), "patient_id": self.pseudo.patient_id(mrn)}
            for ref, mrn in sorted(raw.patient_refs.items()) if ref.startswith("Patient/")
        ]
        return StagedRecords(tables, pa.Table.from_pylist(refs, schema=PATIENT_REFS), rejects)

    def _row(self, table: str, row: dict, raw: RawRecords, source: str) -> dict:
        mrn = row.get("mrn") or raw.patient_refs.get(row.get("ref", ""))
        if mrn:
            patient_id, patient_ref = self.pseudo.patient_id(mrn), None
            offset = self.pseudo.offset_for_token(patient_id)
        else:
            patient_id, patient_ref = None, self.pseudo.reference_key(raw.site, row["ref"])
            offset = self.pseudo.offset_for_token(patient_ref)
        out = {"patient_id": patient_id, "patient_ref": patient_ref, "site": raw.site, "source": source}
        if table == "patients":
            out["sex"] = row.get("sex") or "unknown"
            out["age_years"] = self._age(row.get("birth_date"))
        elif table == "observations":
            out["code"], out["value"], out["unit"] = self.units.convert(row["code"], row["value"], row["unit"])
        for name, value in row.items():
            if name in DATE_COLUMNS:
                out[name] = value + timedelta(days=offset) if value else None
            elif name in ("code", "drug_code", "outcome") and name not in out:
                out[name] = value
        return out

    def _age(self, birth: date | None) -> int | None:
        if birth is None:
            return None
        if birth > self.today:
            raise Rejected(FUTURE_BIRTH_DATE, "the birth date is in the future")
        ref = self.age_reference_date
        years = ref.year - birth.year - ((ref.month, ref.day) < (birth.month, birth.day))
        return min(max(years, 0), MAX_REPORTED_AGE)
