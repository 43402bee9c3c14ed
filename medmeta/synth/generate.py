"""``medmeta synth``: write a synthetic multi-site cohort the way hospitals hand data over.

    out/site_a/*.csv                  EHR CSV exports (two overlapping patient lists)
    out/site_b/bundle_2025.json       FHIR R4 collection Bundle (about half of site B)
    out/site_b/bulk/<Type>.ndjson     FHIR bulk export (the other half)
    out/site_c/*.parquet              research warehouse extracts
    out/imaging/site_a|site_b/<n>.dcm DICOM files; site C's in imaging/site_c_images.zip
    out/faults/...                    hostile files (faults=True only)

Everything under ``out`` is landing data. The answers (labels, expected fault codes) are only
in the returned summary, never written there. The same seed gives byte-identical files.
Writing again into the same folder replaces an earlier run's files; a folder holding anything
else is refused.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.synth.catalogue import COMORBIDITIES, DEFAULT_DISEASES, DISEASE_BY_CODE, DRUGS
from medmeta.synth.cohort import Cohort, build_cohort
from medmeta.synth.dicom_images import generate_images, write_cohort_images
from medmeta.synth.faults import outside_folder, write_faults
from medmeta.synth.site_a_csv import write_site_a
from medmeta.synth.site_b_fhir import write_site_b
from medmeta.synth.site_c_parquet import write_site_c

__all__ = ["generate_cohort", "generate_images"]

MIN_PATIENTS = 10
OWN_FOLDERS = ("site_a", "site_b", "site_c", "imaging", "faults")


def prepare_target(out: Path, patients: int) -> None:
    """Refuse a folder holding anything synth did not write; clear what an earlier run wrote."""
    if patients < MIN_PATIENTS:
        raise MedmetaError(f"a synthetic cohort needs at least {MIN_PATIENTS} patients")
    if out.exists() and not out.is_dir():
        raise MedmetaError(f"{out} is not a folder")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_FOLDERS)
        if foreign:
            raise MedmetaError(f"{out} holds files synth did not write ({', '.join(foreign[:3])}); "
                               "give an empty or new folder")
        for name in OWN_FOLDERS:
            if (out / name).exists():
                shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def disease_counts(cohort: Cohort) -> dict:
    counts = Counter(p.disease for p in cohort.patients)
    return {code: {"name": DISEASE_BY_CODE[code].name, "patients": counts[code]} for code in cohort.diseases}


def drug_counts(cohort: Cohort) -> dict:
    exposures = [e for p in cohort.patients for e in p.exposures]
    return {
        d.atc: {"name": d.name,
                "exposures": sum(e.atc == d.atc for e in exposures),
                "responders": sum(e.atc == d.atc and e.outcome == "response" for e in exposures)}
        for d in DRUGS
    }


def labels(cohort: Cohort) -> dict:
    """The ground truth per MRN: site, primary disease, drug outcomes."""
    return {
        p.mrn: {"site": p.site, "disease": p.disease, "comorbidity": p.comorbidity,
                "drugs": {e.atc: e.outcome for e in p.exposures}}
        for p in cohort.patients
    }


def summarise(cohort: Cohort, sites: dict, images: dict) -> dict:
    comorbidities = Counter(p.comorbidity for p in cohort.patients if p.comorbidity)
    return {
        "seed": cohort.seed,
        "patients": len(cohort.patients),
        "sites": sites,
        "diseases": disease_counts(cohort),
        "comorbidities": {code: comorbidities[code] for code in COMORBIDITIES},
        "drugs": drug_counts(cohort),
        "images": images,
        "labels": labels(cohort),
    }


def generate_cohort(out: Path, *, patients: int = 240, seed: int = 0, faults: bool = False,
                    diseases: int = DEFAULT_DISEASES) -> dict:
    """Write the synthetic cohort (and, with ``faults``, the hostile files) under ``out``.

    Returns a JSON-able summary: counts per site, disease, drug and image kind, the labels
    per MRN and, with ``faults``, ``expected_faults`` (logical path -> reason code),
    ``expected_row_faults`` ([{path, location, code}]) and ``outside_files`` (paths relative
    to ``out`` of files written next to it, as symlink targets). ``diseases``: how many of the
    catalogue's diseases the patients have (the common ones first, then the rarer ones).
    """
    out = Path(out)
    prepare_target(out, patients)
    try:
        cohort = build_cohort(patients, seed, diseases)
    except ValueError as exc:
        raise MedmetaError(str(exc)) from None
    sites = {
        "site_a": write_site_a(cohort, out),
        "site_b": write_site_b(cohort, out),
        "site_c": write_site_c(cohort, out),
    }
    summary = summarise(cohort, sites, write_cohort_images(cohort, out))
    if faults:
        expected = write_faults(cohort, out)
        summary["expected_faults"] = expected.files
        summary["expected_row_faults"] = expected.rows
        summary["outside_files"] = [f"../{outside_folder(out).name}/secret.csv"]
    return summary
