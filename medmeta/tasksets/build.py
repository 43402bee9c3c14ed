"""Build a task set from the current, validated snapshot (see ``medmeta.tasksets`` for the shape).

Same snapshot and same arguments give byte-identical files: rows are ordered by class and
pseudonymous patient id, the manifest holds no time, and JSON keys are sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medmeta.home import Home
from medmeta.tasksets import cases as case_rules
from medmeta.tasksets.features import fit, raw_features, transform
from medmeta.tasksets.snapshot import ValidatedSnapshot, load_validated
from medmeta.tasksets.spec import TaskSetSpec
from medmeta.tasksets.splits import SPLITS, split_classes
from medmeta.tasksets.store import FORMAT, taskset_dir, write_manifest, write_split

ADAPTATION = "adaptation"


@dataclass(frozen=True)
class Plan:
    """What a task set will hold, before anything is written: its cases per split, counts, exclusions."""

    snap: ValidatedSnapshot
    splits: dict[str, list[str]]  # split -> class codes (sorted; label / task i is codes[i])
    rows: dict[str, pd.DataFrame]  # split -> its cases, ordered by class then patient id
    counts: dict[str, dict]  # code -> cases (and responders / non-responders for drugs)
    roles: dict[str, str]  # code -> the validation's label-coverage role
    excluded: list[dict]
    policy: str


def plan_taskset(home: Home, spec: TaskSetSpec) -> Plan:
    """Read the validated snapshot and split its classes; every data problem is raised here, nothing written."""
    snap = load_validated(home)  # the gate: a snapshot that failed validation stops here
    if spec.kind == "disease":
        cases, label_column, excluded, counts, policy = _disease_cases(snap, spec)
    else:
        cases, label_column, excluded, counts, policy = _drug_cases(snap, spec)
    eligible = sorted(code for code, c in counts.items() if c["eligible"])
    roles = {code: snap.coverage.get((spec.kind, code), "unknown") for code in counts}
    per = "" if spec.kind == "disease" else " of each outcome"
    splits = split_classes(eligible, roles, spec.seed, spec.ways if spec.kind == "disease" else 1, spec.kind,
                           f" ({spec.cases_needed}{per}: shots {spec.shots} + queries {spec.queries})")
    adaptation = sorted(e["code"] for e in excluded if e["adaptation_only"])
    if adaptation:
        splits[ADAPTATION] = adaptation

    rows = {split: cases[cases[label_column].isin(codes)].copy() for split, codes in splits.items()}
    for split, frame in rows.items():
        frame["class_index"] = frame[label_column].map({c: i for i, c in enumerate(splits[split])}).astype("int64")
        rows[split] = frame.sort_values(["class_index", "patient_id"], kind="stable").reset_index(drop=True)
    return Plan(snap, splits, rows, counts, roles, excluded, policy)


def build_taskset(home: Home, spec: TaskSetSpec) -> dict:
    """Write ``H/tasksets/<name>/`` and return its manifest; refuses a snapshot that failed validation."""
    plan = plan_taskset(home, spec)
    snap, splits, rows, counts, roles, excluded, policy = (plan.snap, plan.splits, plan.rows, plan.counts, plan.roles,
                                                           plan.excluded, plan.policy)
    feature_spec, records = None, {}
    if spec.inputs in ("records", "both"):
        raw = {split: raw_features(frame, snap.tables, with_conditions=spec.kind == "drug") for split, frame in rows.items()}
        feature_spec = fit(raw["train"])
        records = {split: transform(r, feature_spec) for split, r in raw.items()}

    folder = taskset_dir(home, spec.name)
    manifest_splits, image_size = {}, None
    for split, frame in rows.items():
        tensors: dict[str, np.ndarray] = {}
        if spec.kind == "disease":
            tensors["label"] = frame["class_index"].to_numpy(np.int64)
        else:
            tensors["label"] = frame["label"].to_numpy(np.int64)
            tensors["task"] = frame["class_index"].to_numpy(np.int64)
        if spec.inputs in ("images", "both"):
            pixels = snap.pixels(frame)
            image_size = image_size or (list(pixels.shape[1:]) if len(frame) else None)
            tensors["image"] = pixels[:, None, :, :]
        if split in records:
            tensors["record"] = records[split]
        written = write_split(folder, split, tensors, frame["patient_id"].tolist())
        manifest_splits[split] = {**written, "cases": int(len(frame)),
                                  "classes": [{**counts[code], "code": code, "coverage": roles[code]}
                                              for code in splits[split]]}
        for entry in manifest_splits[split]["classes"]:
            entry.pop("eligible", None)

    manifest = {
        "format": FORMAT,
        "name": spec.name,
        "snapshot": snap.snapshot,
        "kind": spec.kind,
        "inputs": spec.inputs,
        "ways": spec.ways,
        "shots": spec.shots,
        "queries": spec.queries,
        "seed": spec.seed,
        "cases_per_class_needed": spec.cases_needed,
        "label_policy": policy,
        "splits": manifest_splits,
        "excluded": excluded,
        "features": {
            "record": feature_spec.as_dict() if feature_spec else None,
            "image": ({"size": image_size, "channels": 1, "dtype": "float16", "range": [0.0, 1.0],
                       "policy": case_rules.IMAGE_POLICY} if spec.inputs in ("images", "both") else None),
        },
    }
    write_manifest(folder, manifest)
    return manifest


def _excluded(code: str, cases: int, reason: str) -> dict:
    return {"code": code, "cases": cases, "reason": reason, "adaptation_only": cases > 0}


def _disease_cases(snap: ValidatedSnapshot, spec: TaskSetSpec):
    cases, patients = case_rules.disease_labels(snap.tables["conditions"])
    known = set(snap.tables["patients"]["patient_id"])
    cases = cases[cases["patient_id"].isin(known)]
    labelled = set(cases["code"])
    if spec.inputs in ("images", "both"):
        images = case_rules.first_images(snap.tables["images"])
        cases = cases.merge(images.drop(columns=["site", "source"], errors="ignore"), on="patient_id", how="inner")
    per_class = cases.groupby("code")["patient_id"].nunique()
    counts, excluded = {}, []
    need = spec.cases_needed
    for code in sorted(patients):
        n = int(per_class.get(code, 0))
        if n >= need:
            counts[code] = {"cases": n, "patients_with_condition": patients[code], "eligible": True}
            continue
        counts[code] = {"cases": n, "patients_with_condition": patients[code], "eligible": False}
        if n == 0 and code in labelled:
            reason = "no_image: none of its cases has an image"
        elif n == 0:
            reason = ("never_the_label: every patient with it has a rarer condition, which is their label "
                      f"({patients[code]} patients)")
        else:
            reason = f"too_few_cases: {n} cases, an episode needs {need} (shots {spec.shots} + queries {spec.queries})"
        excluded.append(_excluded(code, n, reason))
    return cases, "code", excluded, counts, case_rules.DISEASE_LABEL_POLICY


def _drug_cases(snap: ValidatedSnapshot, spec: TaskSetSpec):
    exposures = snap.tables["medication_exposures"]
    known = set(snap.tables["patients"]["patient_id"])
    cases = case_rules.drug_cases(exposures)
    cases = cases[cases["patient_id"].isin(known)]
    tally = (cases.groupby(["drug_code", "label"]).size().unstack(fill_value=0).reindex(columns=[0, 1], fill_value=0)
             if len(cases) else pd.DataFrame(columns=[0, 1]))
    need = spec.cases_needed
    counts, excluded = {}, []
    for code in sorted(exposures["drug_code"].dropna().unique().tolist()):
        no, yes = (int(tally.loc[code, 0]), int(tally.loc[code, 1])) if code in tally.index else (0, 0)
        ok = min(no, yes) >= need
        counts[code] = {"cases": no + yes, "responders": yes, "non_responders": no, "eligible": ok}
        if ok:
            continue
        reason = ("no_known_outcome: no exposure has a response or no_response outcome" if no + yes == 0 else
                  f"too_few_cases: {yes} responders and {no} non-responders, a task needs {need} of each "
                  f"(shots {spec.shots} + queries {spec.queries})")
        excluded.append(_excluded(code, no + yes, reason))
    return cases.rename(columns={"drug_code": "code"}), "code", excluded, counts, case_rules.DRUG_LABEL_POLICY


__all__ = ["build_taskset", "plan_taskset", "Plan", "SPLITS", "ADAPTATION"]
