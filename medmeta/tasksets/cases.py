"""Cases and their labels: per patient (disease tasks) or per patient and drug (drug tasks).

Disease label policies (``--label-policy``, recorded in the manifest):

- ``rarest``: a patient is one case with one label in the whole task set. A patient with several
  conditions is labelled with the **rarest** of them (fewest patients in the snapshot; ties by
  code), so a rare disease keeps every case it has and a common comorbidity (hypertension next to
  a rare disease) never hides it. A condition that is never anyone's rarest has no cases of its own
  and is listed as excluded (``never_the_label``). Right for data like medmeta's synthetic cohort,
  one primary disease per patient and at most a comorbidity.
- ``per-split``: multimorbid records (Synthea: a median of 3 eligible conditions per patient) can
  not give many classes one case per patient: 100 patients hold at most 100 cases, and on the
  shared Synthea set the rarest rule leaves no class with 8 cases. Here a class takes every
  patient who has the condition, and the patients are shared out **within each split**: among the
  split's classes, each patient is one case of one class (``assign_within_split``: first as many
  classes as possible get an episode's worth of cases, by a maximum matching, then each patient left
  joins their class with the fewest cases). So no episode (drawn within one split) ever holds one patient
  twice, in two classes or twice in one; a patient may be a case in two splits, under different
  classes, since the splits hold different diseases. A class left with fewer cases than an episode
  needs after the sharing is excluded and the split drawn again without it.
- ``auto`` (the default): ``rarest``, unless it keeps fewer than half of the classes that have
  enough patients for an episode; then ``per-split``. The synthetic cohort keeps ``rarest`` (it
  loses only its comorbidities); Synthea gets ``per-split``.

Image cases: a patient's first image (by study date, then image id) stands for the patient;
patients without an image are not image cases. Drug cases: one per patient and drug, its outcome stated
by the data (the patient's first exposure with one) or found by the outcome rules from the
patient's first exposure (``medmeta.outcomes``): ``response`` = 1, ``no_response`` = 0, ``unknown``
is no label.
"""

from __future__ import annotations

import pandas as pd

DISEASE_LABEL_POLICY = ("rarest: one case per patient, labelled with the rarest of the patient's conditions "
                        "(fewest patients in the snapshot, ties by code)")
PER_SPLIT_POLICY = ("per-split: a class takes every patient with the condition; within each split each patient is one "
                    "case of one class (first every class gets shots + queries cases where any sharing allows, by a "
                    "maximum matching; then each patient left joins their class with the fewest cases); a patient may "
                    "be a case in two splits, under different classes")
IMAGE_POLICY = "one image per patient: the first by study date, then image id"
DRUG_LABEL_POLICY = ("one case per patient and drug: the first exposure with a stated outcome, else the outcome "
                     "rules applied to the first exposure; "
                     "label 1 = response, 0 = no_response; unknown outcomes are left out")
OUTCOME_LABEL = {"no_response": 0, "response": 1}


def disease_labels(conditions: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``(cases [patient_id, code], patients per code)``: each patient's rarest condition."""
    pairs = conditions.dropna(subset=["patient_id", "code"])[["patient_id", "code"]].drop_duplicates()
    patients = pairs.groupby("code")["patient_id"].nunique()
    ranked = pairs.assign(n=pairs["code"].map(patients)).sort_values(["patient_id", "n", "code"], kind="stable")
    cases = ranked.drop_duplicates("patient_id")[["patient_id", "code"]].reset_index(drop=True)
    return cases, {str(k): int(v) for k, v in patients.items()}


def disease_pairs(conditions: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``(pairs [patient_id, code], patients per code)``: every patient and class concept once."""
    pairs = conditions.dropna(subset=["patient_id", "code"])[["patient_id", "code"]].drop_duplicates()
    pairs = pairs.sort_values(["code", "patient_id"], kind="stable").reset_index(drop=True)
    patients = pairs.groupby("code")["patient_id"].nunique()
    return pairs, {str(k): int(v) for k, v in patients.items()}


def assign_within_split(pairs: pd.DataFrame, codes: list[str], need: int) -> pd.DataFrame:
    """The rows of ``pairs`` (one per patient and class) that make each patient one case among ``codes``.

    Deterministic, in two steps. First every class gets up to ``need`` cases (an episode's worth),
    as many as any sharing allows: a maximum matching of class slots to patients, found by
    augmenting paths (a class short of ``need`` may take a patient from a class that can take
    another instead), classes with the fewest patients first, patients in order of fewest classes
    among ``codes`` then id. Then each patient left goes to their class with the fewest cases so far
    (ties: fewer patients, then code). Every patient with one of ``codes`` ends up in exactly one.
    """
    from collections import deque

    inside = pairs[pairs["code"].isin(codes)]
    options = inside.groupby("patient_id")["code"].nunique()
    ranked = inside.assign(n=inside["patient_id"].map(options)).sort_values(["code", "n", "patient_id"], kind="stable")
    candidates = {str(c): g["patient_id"].tolist() for c, g in ranked.groupby("code", sort=True)}
    owner: dict[str, str] = {}
    cases = {c: 0 for c in candidates}

    def augment(start: str) -> bool:
        via: dict[str, str | None] = {start: None}  # class -> the patient it gives up on the path
        reached: dict[str, str] = {}  # patient -> the class that reached it
        queue = deque([start])
        while queue:
            code = queue.popleft()
            for patient in candidates[code]:
                if patient in reached or owner.get(patient) == code:
                    continue
                reached[patient] = code
                holder = owner.get(patient)
                if holder is None:  # a free patient: shift every patient along the path by one class
                    while patient is not None:
                        code = reached[patient]
                        owner[patient], patient = code, via[code]
                    return True
                if holder not in via:
                    via[holder] = patient
                    queue.append(holder)
        return False

    for code in sorted(candidates, key=lambda c: (len(candidates[c]), c)):
        while cases[code] < need and augment(code):
            cases[code] += 1
    patients_per = {c: len(v) for c, v in candidates.items()}
    left = sorted(set(inside["patient_id"]) - set(owner))
    classes_of = inside[inside["patient_id"].isin(left)].groupby("patient_id")["code"].apply(list)
    for patient in left:
        best = min(classes_of[patient], key=lambda c: (cases[c], patients_per[c], c))
        owner[patient] = best
        cases[best] += 1
    chosen = pd.DataFrame(sorted(owner.items()), columns=["patient_id", "code"])
    return inside.merge(chosen, on=["patient_id", "code"], how="inner")


def first_images(images: pd.DataFrame) -> pd.DataFrame:
    """One image row per patient: the first by study date (missing last), then image id."""
    ordered = images.dropna(subset=["patient_id"]).sort_values(["patient_id", "study_date", "image_id"],
                                                                  na_position="last", kind="stable")
    return ordered.drop_duplicates("patient_id").reset_index(drop=True)


def drug_cases(labelled: pd.DataFrame) -> pd.DataFrame:
    """``[patient_id, code, start_date, label]``, one row per patient and drug with a known outcome.

    ``labelled`` is ``medmeta.outcomes.apply.label_outcomes``' output (one row per patient and drug)."""
    known = labelled[labelled["outcome"].isin(OUTCOME_LABEL)]
    out = known[["patient_id", "code", "start_date"]].copy()
    out["label"] = known["outcome"].map(OUTCOME_LABEL).astype("int64")
    return out.sort_values(["code", "patient_id"], kind="stable").reset_index(drop=True)
