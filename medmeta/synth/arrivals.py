"""New cases to drop into a landing folder that already holds a cohort: an arrival.

``write_new_cases`` writes ``per_disease`` new site-A patients of each given disease (a rare one the
champion never saw, or a known one) as site A's CSV exports plus one DICOM image each, every file
named ``arrival<batch>_...`` so that, moved into the landing folder, they add patients and replace
nothing. Their MRNs (``A99990xx``..) lie above the range ``build_cohort`` draws from, so they never
merge with a cohort's patients. The same arguments give byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from medmeta.errors import MedmetaError
from medmeta.synth.catalogue import DISEASE_BY_CODE
from medmeta.synth.cohort import Cohort, draw_patient
from medmeta.synth.dicom_images import image_bytes, patient_images
from medmeta.synth.seeding import rng_for
from medmeta.synth.site_a_csv import write_site_a

SITE = "site_a"
FIRST_MRN = 9_999_000  # build_cohort draws MRN numbers below this
PER_BATCH = 100


def write_new_cases(out: Path, diseases: Sequence[str], per_disease: int, batch: int = 1) -> dict:
    """Write the new cases under ``out`` (``site_a/`` and ``imaging/site_a/``); returns
    ``{"patients", "diseases": {code: n}, "files": [paths relative to out], "labels": {mrn: code}}``."""
    unknown = [code for code in diseases if code not in DISEASE_BY_CODE]
    if unknown:
        raise MedmetaError(f"diseases not in the synthetic catalogue: {', '.join(unknown)}")
    if not 1 <= batch <= 9 or per_disease < 1 or per_disease * len(diseases) > PER_BATCH:
        raise MedmetaError(f"a batch (1-9) holds 1 to {PER_BATCH} new patients")
    seed = 7000 + batch  # a stream of their own, apart from any cohort's seed
    patients = [draw_patient(seed, i, f"A{FIRST_MRN + batch * PER_BATCH + i:07d}", SITE, code)
                for i, code in enumerate(c for c in diseases for _ in range(per_disease))]
    cohort = Cohort(seed, tuple(sorted(patients, key=lambda p: p.mrn)), tuple(dict.fromkeys(diseases)))
    out = Path(out)
    staging = out / f".arrival{batch}"
    write_site_a(cohort, staging)
    files = []
    for written in sorted((staging / SITE).iterdir()):
        target = out / SITE / f"arrival{batch}_{written.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.rename(target)
        files.append(target.relative_to(out).as_posix())
    for number, patient in enumerate(cohort.patients, start=1):
        [spec] = patient_images(rng_for(seed, "imaging-plan", patient.mrn), "cohort", patient, 1, number)
        target = out / "imaging" / SITE / f"arrival{batch}_{number:04d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image_bytes(spec, seed))
        files.append(target.relative_to(out).as_posix())
    (staging / SITE).rmdir()
    staging.rmdir()
    return {"patients": len(patients), "diseases": dict(Counter(p.disease for p in patients)), "files": files,
            "labels": {p.mrn: p.disease for p in cohort.patients}}
