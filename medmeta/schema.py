"""The canonical schema: the one shape every site's data takes in the store.

Every table is keyed by ``patient_id``, a keyed pseudonym (see ``medmeta.pseudonyms``), never
an MRN. Dates are shifted by a per-patient offset, so intervals within one patient are true
while calendar dates are not. No column holds a name, address, telecom, free text or a birth
date. ``source`` is the SHA-256 of the input file a row came from (never its path, which may
carry PHI); ``site`` is the site id from the site mapping or the FHIR source.

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

CONDITIONS = pa.schema(
    [
        ("patient_id", pa.string()),
        ("code", pa.string()),  # ICD-10-CM, e.g. "E11.9"
        ("onset_date", pa.date32()),  # shifted
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

OBSERVATIONS = pa.schema(
    [
        ("patient_id", pa.string()),
        ("code", pa.string()),  # canonical LOINC of the analyte (config/units.yaml)
        ("value", pa.float64()),  # in the canonical unit
        ("unit", pa.string()),  # UCUM, the analyte's canonical unit
        ("effective_date", pa.date32()),  # shifted
        ("site", pa.string()),
        ("source", pa.string()),
    ]
)

MEDICATION_EXPOSURES = pa.schema(
    [
        ("patient_id", pa.string()),
        ("drug_code", pa.string()),  # ATC, e.g. "A10BA02"
        ("start_date", pa.date32()),  # shifted
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
}

# The columns that identify one fact: two rows with the same key are one row in the store.
KEYS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id",),
    "conditions": ("patient_id", "code", "onset_date"),
    "observations": ("patient_id", "code", "effective_date", "value"),
    "medication_exposures": ("patient_id", "drug_code", "start_date"),
    "images": ("image_id",),
}

SEXES = ("female", "male", "other", "unknown")
OUTCOMES = ("response", "no_response", "unknown")
