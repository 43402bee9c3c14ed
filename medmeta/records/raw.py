"""The one convention for records between parsing and pseudonymisation.

A parser turns one input file into ``RawRecords``: per canonical table a list of row dicts
holding the site's facts in canonical field names but still identified (``mrn``) or known
only by a FHIR reference (``ref``, e.g. "Patient/123"), with true dates. Every row has a
``location`` ("row 12", "line 7", "entry 3") used when it is rejected. ``RawRecords`` lives in
memory only: ``medmeta.records.canonical`` pseudonymises it before anything is written.

Row fields per table (besides mrn | ref and location):
    patients:             birth_date (date | None), sex (female | male | other | unknown)
    conditions:           code (ICD-10-CM), onset_date (date | None)
    observations:         code (LOINC), value (float), unit (as written), effective_date (date | None)
    medication_exposures: drug_code (ATC), start_date (date | None), outcome (response | no_response | unknown)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from medmeta.errors import Rejected


@dataclass
class RawRecords:
    site: str
    rows: dict[str, list[dict]] = field(default_factory=dict)
    patient_refs: dict[str, str] = field(default_factory=dict)  # "Patient/<id>" -> MRN
    rejects: list[Rejected] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # resource types we read past, by type

    def add(self, table: str, row: dict) -> None:
        self.rows.setdefault(table, []).append(row)

    def reject(self, error: Rejected, location: str) -> None:
        error.location = error.location or location
        self.rejects.append(error)

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())
