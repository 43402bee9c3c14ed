"""The canonical schema: the one shape every site's data takes in the store.

Every table is keyed by ``patient_id``, a keyed pseudonym (see ``medmeta.pseudonyms``), never
an MRN. Dates are shifted by a per-patient offset, so intervals within one patient are true
while calendar dates are not. No column holds a name, address, telecom, free text or a birth
date. ``source`` is the SHA-256 of the input file a row came from (never its path, which may
carry PHI); ``site`` is the site id: from the site mapping (CSV, Parquet), else the ingest
settings or the landing folder the file sits in (FHIR, OMOP; stored as ``folder-<token>``, a keyed
token: a folder name can carry PHI), never from the data itself.

This module is the single written definition of the tables; docs/store-layout.md describes
where they live on disk.
"""

from __future__ import annotations

import pyarrow as pa

PATIENTS = pa.schema(
    [
        ("patient_id", pa.string()),  # keyed pseudonym of the MRN
        ("sex", pa.string()),  # FHIR administrative gender: female | male | other | unknown
        ("age_years", pa.int16()),  # age at the configured reference date, capped at 90
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

# Coded facts keep the source's concept as (system, code, display): ``system`` is the canonical
# URI of its code system (medmeta/terminology/systems.py: OIDs and aliases normalised, a local
# system kept as given), ``code`` the code as the source wrote it (trimmed), ``display`` the
# coding's display text when the source gave one (never a free-text ``text`` element).
CONDITIONS = pa.schema(
    [
        ("patient_id", pa.string()),
        ("system", pa.string()),  # e.g. "http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct"
        ("code", pa.string()),  # e.g. "E11.9", "44054006"
        ("display", pa.string()),
        ("onset_date", pa.date32()),  # shifted
        ("record_id", pa.string()),  # keyed id of the source record (FHIR resource, OMOP row); null for CSV rows
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

OBSERVATIONS = pa.schema(
    [
        ("patient_id", pa.string()),
        ("system", pa.string()),  # the analyte's code system, LOINC for nearly every source
        ("code", pa.string()),  # the analyte's canonical code (config/units.yaml folds aliases into one)
        ("display", pa.string()),
        ("value", pa.float64()),  # in the canonical unit; null for a categorical value
        ("comparator", pa.string()),  # null for an exact value; "<" | "<=" | ">" | ">=": censored
        ("censored", pa.bool_()),  # comparator is not null: value is a bound, never an exact number
        ("value_system", pa.string()),  # categorical values (valueCodeableConcept, valueBoolean)
        ("value_code", pa.string()),
        ("unit", pa.string()),  # UCUM, the analyte's canonical unit; null for a categorical value
        ("effective_date", pa.date32()),  # shifted
        ("record_id", pa.string()),  # keyed id of the source record (FHIR resource, OMOP row); null for CSV rows
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

MEDICATION_EXPOSURES = pa.schema(
    [
        ("patient_id", pa.string()),
        ("drug_system", pa.string()),  # e.g. "http://www.whocc.no/atc", "http://www.nlm.nih.gov/research/umls/rxnorm"
        ("drug_code", pa.string()),  # e.g. "A10BA02", "860975"
        ("drug_display", pa.string()),
        ("start_date", pa.date32()),  # shifted
        ("record_id", pa.string()),  # keyed id of the source record (FHIR resource, OMOP row); null for CSV rows
        ("outcome", pa.string()),  # response | no_response | unknown
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

IMAGES = pa.schema(
    [
        ("image_id", pa.string()),  # the replacement SOP Instance UID
        ("patient_id", pa.string()),
        ("study_uid", pa.string()),  # replacement UIDs, consistent across files and runs
        ("series_uid", pa.string()),
        ("modality", pa.string()),
        ("body_part", pa.string()),
        ("transfer_syntax", pa.string()),  # of the input file
        ("photometric", pa.string()),  # of the input file
        ("rows", pa.int32()),  # input size
        ("columns", pa.int32()),
        ("frames", pa.int32()),
        ("study_date", pa.date32()),  # shifted; null when the file has none
        ("pixel_path", pa.string()),  # the snapshot's stacked pixel cache (N, height, width), relative to the home
        ("pixel_index", pa.int32()),  # this image's index in that stack
        ("height", pa.int32()),  # cached size
        ("width", pa.int32()),
        ("pixel_min", pa.float32()),  # before normalisation, after rescale
        ("pixel_max", pa.float32()),
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

# Compound activity (medmeta.chem): one row per compound per task, duplicates aggregated. Compounds are
# not PHI; ``source`` is still a content hash and ``site`` follows the same rules as the records'.
COMPOUND_ACTIVITIES = pa.schema(
    [
        ("task", pa.string()),  # target (or assay) and activity type: "CHEMBL237_Ki"
        ("target", pa.string()),  # the grouping key: "CHEMBL237"
        ("activity_type", pa.string()),  # Ki, IC50, EC50, Kd, ... or "label" for a binary label column
        ("compound_key", pa.string()),  # InChIKey of the standardised parent (medmeta.chem.standardise)
        ("smiles", pa.string()),  # canonical isomeric SMILES of that parent
        ("p_activity", pa.float64()),  # mean -log10(molar) of its measurements; null for label-only rows
        ("active", pa.bool_()),  # from a binary label column; null otherwise
        ("n_measurements", pa.int32()),  # the rows (measurements) aggregated into this one
        ("site", pa.string()),
        ("source", pa.string()),  # the first (lowest) content hash of the files that measured it
    ]
)

# Row-level rejects (an NDJSON line, an Observation whose value is not a number, a birth date
# in the future ...). ``location`` says where in the file (e.g. "line 7", "entry 3", "row 12").
RECORD_QUARANTINE = pa.schema(
    [
        ("source", pa.string()),
        ("location", pa.string()),
        ("reason", pa.string()),  # "<code>: <message>", never quoting the data
    ]
)

TABLES: dict[str, pa.Schema] = {
    "patients": PATIENTS,
    "conditions": CONDITIONS,
    "observations": OBSERVATIONS,
    "medication_exposures": MEDICATION_EXPOSURES,
    "images": IMAGES,
    "compound_activities": COMPOUND_ACTIVITIES,
}

# The columns that identify one fact: two rows with the same key are one row in the store.
KEYS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id",),
    "conditions": ("patient_id", "system", "code", "onset_date", "record_id"),
    "observations": ("patient_id", "system", "code", "effective_date", "value", "comparator", "value_code",
                     "record_id"),
    "medication_exposures": ("patient_id", "drug_system", "drug_code", "start_date", "record_id"),
    "images": ("image_id",),
    "compound_activities": ("task", "compound_key"),
}

# The store's layout version (``manifest.json`` ``schema_version``). 2: coded facts carry their
# code system and display; observations carry censoring and categorical values. A home written
# by an older version is refused with a message saying how to rebuild it.
SCHEMA_VERSION = 2

SEXES = ("female", "male", "other", "unknown")
OUTCOMES = ("response", "no_response", "unknown")
