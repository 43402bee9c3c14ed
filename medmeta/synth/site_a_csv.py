"""Site A: CSV exports from a hospital EHR (config/sites/site_a.yaml).

US conventional units in one column per lab ("wide"), MM/DD/YYYY birth dates, ICD-10-CM
codes without the dot, GENDER M/F/U and RESPONDED Y/N. Every PHI column the mapping lists
is present and filled. The patient list comes as two exports that overlap: a few patients
are in both ``patients.csv`` and ``patients_2025q4.csv``, with identical rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medmeta.synth.catalogue import DISEASE_BY_CODE, from_canonical
from medmeta.synth.cohort import Cohort, Patient
from medmeta.synth.seeding import rng_for

SITE = "site_a"
PATIENT_COLUMNS = ["MRN", "LAST_NAME", "FIRST_NAME", "DOB", "GENDER", "STREET_ADDRESS", "CITY", "PHONE"]
DIAGNOSIS_COLUMNS = ["MRN", "DX_CODE", "DX_DATE", "ATTENDING"]
MEDICATION_COLUMNS = ["MRN", "ATC_CODE", "START_DATE", "RESPONDED", "PRESCRIBER"]
# wide lab column -> (analyte, unit, decimals)
LAB_COLUMNS = {
    "GLUCOSE_MG_DL": ("glucose", "mg/dL", 0),
    "CREATININE_MG_DL": ("creatinine", "mg/dL", 2),
    "CHOLESTEROL_MG_DL": ("cholesterol_total", "mg/dL", 0),
    "HGB_G_DL": ("hemoglobin", "g/dL", 1),
    "SODIUM_MEQ_L": ("sodium", "meq/L", 0),
    "WEIGHT_LB": ("body_weight", "[lb_av]", 1),
    "TEMP_F": ("body_temperature", "[degF]", 1),
}
LAB_HEADER = ["MRN", "LAB_DATE", *LAB_COLUMNS, "LAB_NOTES"]
GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
NOTE_TEMPLATES = (
    "Fasting specimen. Pt {name} identified by name and DOB {dob}.",
    "Called {name} at {phone} to discuss results.",
    "Hemolysed sample redrawn; {first} tolerated well.",
    "Results reviewed with {name} in clinic.",
    "",
)
Q4_SHARE = 0.15  # patients only in the Q4 export
OVERLAP = 5  # patients in both exports


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> int:
    """Write a UTF-8 CSV with CRLF line ends, as the EHR exports do; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def us_date(day) -> str:
    return day.strftime("%m/%d/%Y")


def patient_row(p: Patient) -> list[str]:
    person = p.person
    return [p.mrn, person.last_name, person.first_name, us_date(p.birth_date), GENDER[p.sex],
            person.street, person.city, person.phone]


def split_exports(patients: list[Patient], seed: int) -> tuple[list[Patient], list[Patient]]:
    """The patients of the main export and of the Q4 export (which overlap by a few)."""
    if len(patients) < 2:
        return patients, []
    order = [patients[i] for i in rng_for(seed, SITE, "exports").permutation(len(patients))]
    q4_only = max(1, round(Q4_SHARE * len(patients)))
    overlap = min(OVERLAP, len(patients) - q4_only - 1)
    main = order[q4_only:]
    q4 = order[:q4_only] + main[:overlap]
    return sorted(main, key=lambda p: p.mrn), sorted(q4, key=lambda p: p.mrn)


def diagnosis_rows(p: Patient) -> list[list[str]]:
    rows = [[p.mrn, DISEASE_BY_CODE[p.disease].dotless, p.diagnosis_date.isoformat(), p.attending]]
    if p.comorbidity:
        rows.append([p.mrn, p.comorbidity.replace(".", ""), p.comorbidity_date.isoformat(), p.attending])
    return sorted(rows)


def lab_note(rng: np.random.Generator, p: Patient) -> str:
    template = NOTE_TEMPLATES[int(rng.integers(len(NOTE_TEMPLATES)))]
    return template.format(name=p.person.full_name, first=p.person.first_name,
                           dob=us_date(p.birth_date), phone=p.person.phone)


def lab_cell(values: dict[str, float], analyte: str, unit: str, decimals: int) -> str:
    if analyte not in values:
        return ""
    return f"{from_canonical(analyte, values[analyte], unit):.{decimals}f}"


def lab_rows(p: Patient, seed: int) -> list[list[str]]:
    rng = rng_for(seed, SITE, "notes", p.mrn)
    rows = []
    for visit in p.visits:
        cells = [lab_cell(visit.values, *spec) for spec in LAB_COLUMNS.values()]
        if any(cells):
            rows.append([p.mrn, visit.day.isoformat(), *cells, lab_note(rng, p)])
    return rows


def medication_rows(p: Patient) -> list[list[str]]:
    return [[p.mrn, e.atc, e.start.isoformat(), "Y" if e.outcome == "response" else "N", e.prescriber]
            for e in p.exposures]


def write_site_a(cohort: Cohort, out: Path) -> dict:
    """Write site A's five CSV files under ``out/site_a``; returns the row counts per file."""
    patients = cohort.at(SITE)
    main, q4 = split_exports(patients, cohort.seed)
    folder = out / SITE
    rows = {
        "patients.csv": write_csv(folder / "patients.csv", PATIENT_COLUMNS, [patient_row(p) for p in main]),
        "patients_2025q4.csv": write_csv(folder / "patients_2025q4.csv", PATIENT_COLUMNS,
                                         [patient_row(p) for p in q4]),
        "diagnoses.csv": write_csv(folder / "diagnoses.csv", DIAGNOSIS_COLUMNS,
                                   [r for p in patients for r in diagnosis_rows(p)]),
        "labs.csv": write_csv(folder / "labs.csv", LAB_HEADER,
                              [r for p in patients for r in lab_rows(p, cohort.seed)]),
        "medications.csv": write_csv(folder / "medications.csv", MEDICATION_COLUMNS,
                                     [r for p in patients for r in medication_rows(p)]),
    }
    overlap = sorted({p.mrn for p in main} & {p.mrn for p in q4})
    return {"patients": len(patients), "rows": rows, "in_both_patient_exports": overlap}
