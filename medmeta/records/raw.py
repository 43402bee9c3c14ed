"""The one convention for records between parsing and pseudonymisation.

A parser turns one input file into ``RawRecords``: per canonical table a list of row dicts
holding the site's facts in canonical field names but still identified (``mrn``) or known
only by a FHIR reference (``ref``, e.g. "Patient/123"), with true dates. Every row has a
``location`` ("row 12", "line 7", "entry 3") used when it is rejected. ``RawRecords`` lives in
memory only: ``medmeta.records.canonical`` pseudonymises it before anything is written.

A row names its patient by ``mrn`` (with ``issuer``: the identifier's system or assigner, None
when the source names none; the pseudonym is keyed on both) or by ``ref`` (a reference such as
"Patient/123" or "urn:uuid:...", resolved within the file or, at consolidation, across the files
of the same site).

Rows of conditions, observations and medication exposures may carry ``record_ref``: the identity of
the source record within its site (FHIR "MedicationRequest/<id>", OMOP "drug_exposure/<id>"); it is
stored keyed (``record_id``), so two prescriptions of one drug on one day stay two facts while the
same resource in two exports of one site is one.

Row fields per table (besides mrn [+ issuer] | ref, and location):
    patients:             birth_date (date | None), sex (female | male | other | unknown)
    conditions:           system (canonical URI, medmeta.terminology.systems), code, display (str | None),
                          onset_date (date | None)
    observations:         system, code, display, effective_date (date | None), and either
                          value (float) + unit (as written, str | None) + comparator (None | "<" | "<=" | ">" | ">=")
                          or value_system + value_code (a categorical value; value None, unit None)
    medication_exposures: drug_system, drug_code, drug_display (str | None), start_date (date | None),
                          outcome (response | no_response | unknown); or, instead of the drug_* fields,
                          medication_ref ("Medication/<id>" | "urn:uuid:..."): a Medication in another
                          file of the export, resolved at consolidation through ``medications``

Besides rows and rejects, a parser counts what it read past: ``ignored`` by resource type (types
medmeta has no use for), ``excluded`` by rule (a fact deliberately left out, e.g.
"Condition: verificationStatus refuted", "Observation: status cancelled") and ``read`` by resource
type (resources that contributed, including those only used to resolve another, e.g. Medication).
Every resource of a file is in exactly one of: read, ignored, excluded, rejected. Rules that name a
part of a resource ("Observation component: ...") count parts of a resource that was read, not resources.

``concepts`` holds a code-system table the file defines rather than facts about patients: an OMOP
CDM CONCEPT table parses to one dict per concept, ``concept_id`` (int), ``system`` (canonical URI of
its vocabulary_id), ``code`` (concept_code), ``display`` (concept_name | None); see
``medmeta.records.omop_concepts``, whose ``resolve_omop_concepts`` applies it at consolidation to
the rows other files coded as OMOP concept ids (system ``OMOP_CONCEPT``). Empty for other inputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from medmeta.errors import Rejected


@dataclass
class RawRecords:
    site: str
    rows: dict[str, list[dict]] = field(default_factory=dict)
    # "Patient/<id>" or "urn:uuid:..." -> (MRN, issuer): a reference whose Patient is in this file
    patient_refs: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # a Medication read in this file, by its normalised reference -> (system, code, display); rows whose
    # Medication is in another file of the export carry ``medication_ref`` instead of drug_* fields
    medications: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    rejects: list[Rejected] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # resource types we read past, by type
    excluded: Counter = field(default_factory=Counter)  # facts left out on purpose, by rule
    read: Counter = field(default_factory=Counter)  # resources that contributed, by type
    concepts: list[dict] = field(default_factory=list)  # a vocabulary the file defines (OMOP CONCEPT)

    def add(self, table: str, row: dict) -> None:
        self.rows.setdefault(table, []).append(row)

    def reject(self, error: Rejected, location: str) -> None:
        error.location = error.location or location
        self.rejects.append(error)

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())
