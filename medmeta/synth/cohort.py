"""The synthetic patients and their facts, in memory, before any site writes them.

``build_cohort`` splits the patients over diseases and sites by fixed quotas (so the counts
do not depend on the seed), then draws each patient's PHI, dates, lab values and drug
responses from a stream of their own. Lab values are canonical (config/units.yaml units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from medmeta.synth.catalogue import ANALYTES, DEFAULT_DISEASES, DISEASE_BY_CODE, DISEASES, DRUGS, Analyte, Drug
from medmeta.synth.people import Person, make_clinician, make_person
from medmeta.synth.seeding import rng_for, uuid_from

SITES = ("site_a", "site_b", "site_c")
SITE_SHARES = (0.4, 0.3, 0.3)
SITE_PREFIX = {"site_a": "A", "site_b": "B", "site_c": "C"}
AS_OF = date(2026, 1, 1)  # ages are taken at this date (the ingest's age_reference_date)
FIRST_DIAGNOSIS = date(2019, 1, 1)
LAST_DIAGNOSIS = date(2025, 6, 30)
LAST_RECORD = date(2025, 12, 20)
COMORBIDITY_CHANCE = 0.35
COMORBIDITY_SHIFTS = {"I10": {"systolic_bp": 15.0}, "E78.5": {"cholesterol_total": 1.1}}
DRUG_COUNT_P = (0.35, 0.40, 0.25)  # 1, 2 or 3 drugs


@dataclass(frozen=True)
class LabVisit:
    day: date
    values: dict[str, float]  # analyte name -> value in its canonical unit (measured only)


@dataclass(frozen=True)
class Exposure:
    atc: str
    start: date
    outcome: str  # response | no_response
    prescriber: str


@dataclass(frozen=True)
class Patient:
    mrn: str
    site: str
    sex: str  # female | male | unknown
    birth_date: date
    person: Person
    disease: str  # ICD-10-CM of the primary disease: the label
    diagnosis_date: date
    attending: str
    comorbidity: str | None
    comorbidity_date: date | None
    fhir_id: str  # the opaque FHIR id (used by site B)
    baseline: dict[str, float]  # analyte -> the patient's own level, canonical unit
    visits: tuple[LabVisit, ...]
    exposures: tuple[Exposure, ...]

    @property
    def age(self) -> int:
        return age_at(self.birth_date)


@dataclass(frozen=True)
class Cohort:
    seed: int
    patients: tuple[Patient, ...]  # sorted by MRN
    diseases: tuple[str, ...] = tuple(d.code for d in DISEASES[:DEFAULT_DISEASES])  # the catalogue's first N

    def at(self, site: str) -> list[Patient]:
        return [p for p in self.patients if p.site == site]

    def by_mrn(self) -> dict[str, Patient]:
        return {p.mrn: p for p in self.patients}


def age_at(birth: date, when: date = AS_OF) -> int:
    """Whole years from ``birth`` to ``when``."""
    return when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))


def quota_split(total: int, weights: tuple[float, ...]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder, ties to the first)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def shuffled_labels(total: int, labels: tuple, weights: tuple, rng: np.random.Generator) -> list:
    """``total`` labels in quota proportions, in a seeded random order."""
    counts = quota_split(total, weights)
    pool = [label for label, count in zip(labels, counts) for _ in range(count)]
    return [pool[i] for i in rng.permutation(total)]


def draw_mrn_numbers(total: int, seed: int) -> list[int]:
    """``total`` distinct 7-digit numbers (MRNs are unique across sites, prefix aside)."""
    rng = rng_for(seed, "mrn")
    return [1000 + int(x) for x in rng.choice(9_999_000 - 1000, size=total, replace=False)]


def day_between(rng: np.random.Generator, first: date, last: date) -> date:
    return first + timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def draw_sex(rng: np.random.Generator) -> str:
    return str(rng.choice(["female", "male", "unknown"], p=[0.495, 0.49, 0.015]))


def draw_birth_date(rng: np.random.Generator, mean_age: float, diagnosis: date) -> date:
    """A birth date giving an adult age around ``mean_age`` at ``AS_OF``."""
    age = float(np.clip(rng.normal(mean_age, 12.0), 16, 92))
    birth = AS_OF - timedelta(days=int(age * 365.25))
    return min(birth, diagnosis - timedelta(days=16 * 365))


def sex_sign(sex: str) -> float:
    return {"male": 0.5, "female": -0.5}.get(sex, 0.0)


def draw_baseline(rng: np.random.Generator, sex: str, age: int, shifts: dict[str, float]) -> dict:
    """The patient's own level of every analyte: healthy mean + sex + disease + noise."""
    baseline = {}
    for analyte in ANALYTES:
        level = analyte.mean + analyte.male_shift * sex_sign(sex) + rng.normal(0, analyte.sd)
        level += shifts.get(analyte.name, 0.0) * rng.uniform(0.6, 1.4)
        if analyte.name == "systolic_bp":
            level += 0.4 * max(age - 50, 0)
        baseline[analyte.name] = float(np.clip(level, analyte.low, analyte.high))
    return baseline


def disease_shifts(disease: str, comorbidity: str | None) -> dict[str, float]:
    shifts = dict(DISEASE_BY_CODE[disease].lab_shifts)
    for name, shift in COMORBIDITY_SHIFTS.get(comorbidity, {}).items():
        shifts[name] = shifts.get(name, 0.0) + shift
    return shifts


def measure(rng: np.random.Generator, analyte: Analyte, level: float) -> float:
    noise = rng.normal(0, 0.3 * analyte.sd) if analyte.name != "body_height" else rng.normal(0, 0.4)
    return float(np.clip(level + noise, analyte.low, analyte.high))


def draw_visits(rng: np.random.Generator, baseline: dict, diagnosis: date) -> tuple[LabVisit, ...]:
    """2-4 lab dates around the diagnosis; the first measures everything, later ones most."""
    first = diagnosis - timedelta(days=20)
    last = min(diagnosis + timedelta(days=420), LAST_RECORD)
    offsets = rng.choice((last - first).days + 1, size=int(rng.integers(2, 5)), replace=False)
    visits = []
    for number, offset in enumerate(sorted(int(o) for o in offsets)):
        values = {}
        for analyte in ANALYTES:
            wanted = number == 0 or (analyte.per_visit and rng.random() < 0.85)
            if wanted:
                values[analyte.name] = measure(rng, analyte, baseline[analyte.name])
        visits.append(LabVisit(first + timedelta(days=offset), values))
    return tuple(visits)


def features(age: int, sex: str, baseline: dict[str, float]) -> dict[str, float]:
    """The standardised features the drug-response models read."""
    values = {"intercept": 1.0, "age": (age - 60) / 15, "male": 1.0 if sex == "male" else 0.0}
    for analyte in ANALYTES:
        z = (baseline[analyte.name] - analyte.mean) / analyte.sd
        values[analyte.name] = float(np.clip(z, -3, 3))
    return values


def response_probability(drug: Drug, feats: dict[str, float], disease: str) -> float:
    logit = sum(weight * feats[name] for name, weight in drug.weights.items())
    logit += drug.disease_effects.get(disease, 0.0)
    return 1.0 / (1.0 + math.exp(-logit))


def choose_drugs(rng: np.random.Generator, disease: str, comorbidity: str | None) -> list[Drug]:
    """1-3 drugs, those indicated for the patient's conditions five times as likely."""
    conditions = {disease, comorbidity}
    weights = np.array([5.0 if conditions & set(d.indications) else 1.0 for d in DRUGS])
    count = int(rng.choice([1, 2, 3], p=DRUG_COUNT_P))
    picked = rng.choice(len(DRUGS), size=count, replace=False, p=weights / weights.sum())
    return [DRUGS[i] for i in sorted(int(i) for i in picked)]


def draw_exposures(rng: np.random.Generator, disease: str, comorbidity: str | None, diagnosis: date,
                   feats: dict[str, float]) -> tuple[Exposure, ...]:
    """The patient's drugs, each with a start date and an outcome drawn from its response model."""
    exposures = []
    for drug in choose_drugs(rng, disease, comorbidity):
        start = min(diagnosis + timedelta(days=int(rng.integers(0, 240))), LAST_RECORD)
        responded = rng.random() < response_probability(drug, feats, disease)
        outcome = "response" if responded else "no_response"
        exposures.append(Exposure(drug.atc, start, outcome, make_clinician(rng)))
    return tuple(exposures)


def draw_patient(seed: int, index: int, mrn: str, site: str, disease: str) -> Patient:
    """One patient, drawn from a stream of their own."""
    rng = rng_for(seed, "patient", index)
    sex = draw_sex(rng)
    diagnosis = day_between(rng, FIRST_DIAGNOSIS, LAST_DIAGNOSIS)
    birth = draw_birth_date(rng, DISEASE_BY_CODE[disease].age, diagnosis)
    person = make_person(rng, sex, site)
    comorbidity = str(rng.choice(["I10", "E78.5"])) if rng.random() < COMORBIDITY_CHANCE else None
    comorbidity_date = diagnosis - timedelta(days=int(rng.integers(30, 1500))) if comorbidity else None
    patient_age = age_at(birth)
    baseline = draw_baseline(rng, sex, patient_age, disease_shifts(disease, comorbidity))
    feats = features(patient_age, sex, baseline)
    return Patient(
        mrn=mrn, site=site, sex=sex, birth_date=birth, person=person, disease=disease,
        diagnosis_date=diagnosis, attending=make_clinician(rng), comorbidity=comorbidity,
        comorbidity_date=comorbidity_date, fhir_id=uuid_from(rng), baseline=baseline,
        visits=draw_visits(rng, baseline, diagnosis),
        exposures=draw_exposures(rng, disease, comorbidity, diagnosis, feats),
    )


def build_cohort(patients: int = 240, seed: int = 0, diseases: int = DEFAULT_DISEASES) -> Cohort:
    """``patients`` synthetic patients over sites A, B, C (about 40/30/30), sorted by MRN, with
    the first ``diseases`` diseases of the catalogue (the common ones, then the long tail)."""
    if not 2 <= diseases <= len(DISEASES):
        raise ValueError(f"a cohort draws from 2 to {len(DISEASES)} diseases of the catalogue, not {diseases}")
    catalogue = DISEASES[:diseases]
    codes = tuple(d.code for d in catalogue)
    labels = shuffled_labels(patients, codes, tuple(d.weight for d in catalogue), rng_for(seed, "diseases"))
    sites = shuffled_labels(patients, SITES, SITE_SHARES, rng_for(seed, "sites"))
    numbers = draw_mrn_numbers(patients, seed)
    drawn = [
        draw_patient(seed, i, f"{SITE_PREFIX[sites[i]]}{numbers[i]:07d}", sites[i], labels[i])
        for i in range(patients)
    ]
    return Cohort(seed, tuple(sorted(drawn, key=lambda p: p.mrn)), codes)
