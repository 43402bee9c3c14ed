"""Cases and their labels: one row per patient (disease tasks) or per patient and drug (drug tasks).

Disease label policy: a patient is one case with one label. A patient with several conditions
is labelled with the **rarest** of them (fewest patients in the snapshot; ties by code), so a
rare disease keeps every case it has and a common comorbidity (hypertension next to a rare
disease) never hides it. A condition that is never anyone's rarest has no cases of its own and is
listed as excluded (``never_the_label``).

Image cases: a patient's first image (by study date, then image id) stands for the patient;
patients without an image are not image cases. Drug cases: a patient's first exposure to the drug
with a known outcome (``response`` = 1, ``no_response`` = 0; ``unknown`` is no label).
"""

from __future__ import annotations

import pandas as pd

DISEASE_LABEL_POLICY = ("one case per patient, labelled with the rarest of the patient's conditions "
                        "(fewest patients in the snapshot, ties by code)")
IMAGE_POLICY = "one image per patient: the first by study date, then image id"
DRUG_LABEL_POLICY = ("one case per patient and drug: the first exposure with a known outcome; "
                     "label 1 = response, 0 = no_response; unknown outcomes are left out")
OUTCOME_LABEL = {"no_response": 0, "response": 1}


def disease_labels(conditions: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``(cases [patient_id, code], patients per code)``: each patient's rarest condition."""
    pairs = conditions.dropna(subset=["patient_id", "code"])[["patient_id", "code"]].drop_duplicates()
    patients = pairs.groupby("code")["patient_id"].nunique()
    ranked = pairs.assign(n=pairs["code"].map(patients)).sort_values(["patient_id", "n", "code"], kind="stable")
    cases = ranked.drop_duplicates("patient_id")[["patient_id", "code"]].reset_index(drop=True)
    return cases, {str(k): int(v) for k, v in patients.items()}


def first_images(images: pd.DataFrame) -> pd.DataFrame:
    """One image row per patient: the first by study date (missing last), then image id."""
    ordered = images.dropna(subset=["patient_id"]).sort_values(["patient_id", "study_date", "image_id"],
                                                                  na_position="last", kind="stable")
    return ordered.drop_duplicates("patient_id").reset_index(drop=True)


def drug_cases(exposures: pd.DataFrame) -> pd.DataFrame:
    """``[patient_id, drug_code, start_date, label]``, one row per patient and drug."""
    known = exposures[exposures["outcome"].isin(OUTCOME_LABEL)].dropna(subset=["patient_id", "drug_code"])
    first = known.sort_values(["drug_code", "patient_id", "start_date"], na_position="last", kind="stable")
    first = first.drop_duplicates(["drug_code", "patient_id"])
    out = first[["patient_id", "drug_code", "start_date"]].copy()
    out["label"] = first["outcome"].map(OUTCOME_LABEL).astype("int64")
    return out.reset_index(drop=True)
