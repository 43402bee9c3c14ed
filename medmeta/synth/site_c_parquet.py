"""Site C: Parquet extracts from a research data warehouse (config/sites/site_c.yaml).

One row per measurement ("long") with the unit in its own column and a mix of SI units
(hemoglobin in g/L or mmol/L, height in cm or m, blood pressure in kPa); numeric sex codes;
dates as date32 columns and measurement times as timestamps. The PHI columns are filled.
"""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medmeta.synth.catalogue import from_canonical
from medmeta.synth.cohort import Cohort, Patient
from medmeta.synth.seeding import rng_for

SITE = "site_c"
SEX_CODE = {"male": "1", "female": "2", "other": "9", "unknown": "9"}
OUTCOME = {"response": "responder", "no_response": "non_responder"}
# analyte -> the (LOINC, unit, decimals) the warehouse stores it in; several = a mix per row
UNITS = {
    "glucose": [("15074-8", "mmol/L", 1)],
    "creatinine": [("14682-9", "umol/L", 0)],
    "cholesterol_total": [("14647-2", "mmol/L", 2)],
    "hemoglobin": [("718-7", "g/L", 0), ("59260-0", "mmol/L", 1)],
    "sodium": [("2951-2", "mmol/L", 0)],
    "potassium": [("2823-3", "mmol/L", 1)],
    "crp": [("1988-5", "mg/L", 0)],
    "wbc": [("6690-2", "10*9/L", 1)],
    "body_weight": [("29463-7", "kg", 1)],
    "body_height": [("8302-2", "cm", 0), ("8302-2", "m", 2)],
    "systolic_bp": [("8480-6", "kPa", 1)],
    "heart_rate": [("8867-4", "{beats}/min", 0)],
    "body_temperature": [("8310-5", "Cel", 1)],
}
COMMENTS = ("", "", "repeat sample", "haemolysed, redrawn", "{name} non-fasting",
            "phoned result to {name}", "lipaemic")

PATIENTS = pa.schema([("pid", pa.string()), ("sex_code", pa.string()), ("birth_dt", pa.date32()),
                      ("full_name", pa.string()), ("postcode", pa.string()), ("email", pa.string())])
PROBLEMS = pa.schema([("pid", pa.string()), ("icd10", pa.string()), ("noted_on", pa.date32())])
MEASUREMENTS = pa.schema([("pid", pa.string()), ("test_loinc", pa.string()), ("result", pa.float64()),
                          ("result_unit", pa.string()), ("taken_at", pa.timestamp("us")),
                          ("comment", pa.string())])
DRUGS = pa.schema([("pid", pa.string()), ("atc", pa.string()), ("started", pa.date32()),
                   ("outcome", pa.string())])


def write_table(path: Path, schema: pa.Schema, rows: list[tuple]) -> int:
    """Write ``rows`` (tuples in schema order) as Parquet; returns the row count."""
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
    return len(rows)


def patient_row(p: Patient) -> tuple:
    return (p.mrn, SEX_CODE[p.sex], p.birth_date, p.person.full_name, p.person.postcode, p.person.email)


def problem_rows(p: Patient) -> list[tuple]:
    rows = [(p.mrn, p.disease, p.diagnosis_date)]
    if p.comorbidity:
        rows.append((p.mrn, p.comorbidity, p.comorbidity_date))
    return sorted(rows)


def measurement_row(rng: np.random.Generator, p: Patient, analyte: str, value: float, when: datetime) -> tuple:
    options = UNITS[analyte]
    loinc, unit, decimals = options[int(rng.integers(len(options)))]
    result = round(from_canonical(analyte, value, unit), decimals)
    comment = COMMENTS[int(rng.integers(len(COMMENTS)))].format(name=p.person.full_name)
    return (p.mrn, loinc, float(result), unit, when, comment)


def measurement_rows(p: Patient, seed: int) -> list[tuple]:
    rng = rng_for(seed, SITE, "measurements", p.mrn)
    rows = []
    for visit in p.visits:
        minutes = int(rng.integers(7 * 60, 17 * 60))
        when = datetime.combine(visit.day, time(minutes // 60, minutes % 60))
        rows += [measurement_row(rng, p, analyte, value, when) for analyte, value in visit.values.items()]
    return rows


def drug_rows(p: Patient) -> list[tuple]:
    return [(p.mrn, e.atc, e.start, OUTCOME[e.outcome]) for e in p.exposures]


def write_site_c(cohort: Cohort, out: Path) -> dict:
    """Write site C's four Parquet files under ``out/site_c``; returns the row counts."""
    patients = cohort.at(SITE)
    folder = out / SITE
    rows = {
        "patients.parquet": write_table(folder / "patients.parquet", PATIENTS, [patient_row(p) for p in patients]),
        "problems.parquet": write_table(folder / "problems.parquet", PROBLEMS,
                                        [r for p in patients for r in problem_rows(p)]),
        "measurements.parquet": write_table(folder / "measurements.parquet", MEASUREMENTS,
                                            [r for p in patients for r in measurement_rows(p, cohort.seed)]),
        "drugs.parquet": write_table(folder / "drugs.parquet", DRUGS, [r for p in patients for r in drug_rows(p)]),
    }
    return {"patients": len(patients), "rows": rows}
