"""Build a task set from the current, validated snapshot (see ``medmeta.tasksets`` for the shape).

Same snapshot and same arguments give byte-identical files: rows are ordered by class and
pseudonymous patient id, the manifest holds no time, and JSON keys are sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.outcomes.apply import check_user_rules, drug_report, label_outcomes
from medmeta.outcomes.rules import load_rules
from medmeta.tasksets import cases as case_rules
from medmeta.tasksets.classes import disease_concepts, drug_concepts
from medmeta.tasksets.features import fit, raw_features, transform
from medmeta.tasksets.snapshot import ValidatedSnapshot, load_validated
from medmeta.tasksets.spec import TaskSetSpec
from medmeta.tasksets.splits import RULE, SPLITS, natural_split, split_classes
from medmeta.terminology.concept_maps import load_concept_maps
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
    classes: dict  # the class system, how it was chosen, concept maps, outcome rules, policy choice
    outcomes: dict | None = None  # drug tasks: per drug, responders / non-responders / unknown by reason
    split_rule: dict | None = None  # how classes were split, which sit outside their natural split (splits.py)


class NotEnoughClasses(MedmetaError):
    """Too few classes for three disjoint splits; carries what was found per class (``report``)."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def plan_taskset(home: Home, spec: TaskSetSpec) -> Plan:
    """Read the validated snapshot, check the map and rule files, form the classes and split them;
    every data or settings problem is raised here, nothing written. Target tasks: ``medmeta.chem.target_tasks``."""
    if spec.kind == "target":
        from medmeta.chem.target_tasks import plan_target_taskset

        return plan_target_taskset(home, spec)
    snap = load_validated(home)  # the gate: a snapshot that failed validation stops here
    maps = load_concept_maps(spec.concept_maps)  # a bad map file stops here, naming file and line
    if spec.kind == "disease":
        form = _disease_cases(snap, spec, maps)
    else:
        form = _drug_cases(snap, spec, maps)
    cases, excluded, counts = form.cases, form.excluded, form.counts
    system = form.classes["system"]["uri"]  # coverage is per concept: (kind, system, code)
    roles = {code: snap.coverage.get((spec.kind, system, code), "unknown") for code in counts}
    per = "" if spec.kind == "disease" else " of each outcome"
    need = f" ({spec.cases_needed}{per}: shots {spec.shots} + queries {spec.queries})"
    while True:
        eligible = sorted(code for code, c in counts.items() if c["eligible"])
        try:
            splits = split_classes(eligible, roles, spec.seed, spec.ways if spec.kind == "disease" else 1, spec.kind,
                                   need)
        except MedmetaError as error:
            raise NotEnoughClasses(str(error), {"class_system": form.classes["system"], "excluded": excluded,
                                                "outcomes": form.outcomes}) from None
        adaptation = sorted(e["code"] for e in excluded if e["adaptation_only"])
        if adaptation:
            splits[ADAPTATION] = adaptation
        if not form.per_split:
            rows = {split: cases[cases["code"].isin(codes)].copy() for split, codes in splits.items()}
            break
        rows, short = _share_patients(cases, splits, roles, spec.cases_needed)
        if not short:
            break
        for code, n in sorted(short.items()):  # too few once patients are shared out: out, and split again
            counts[code] = {**counts[code], "eligible": False}
            excluded.append(_excluded(code, int(n), f"too_few_cases: {n} cases once each patient of its split counts "
                                                    f"once, an episode needs {spec.cases_needed} (shots {spec.shots} "
                                                    f"+ queries {spec.queries})"))
    for split, codes in splits.items():
        if form.per_split:
            n = rows[split]["code"].value_counts()
            for code in codes:
                counts[code] = {**counts[code], "cases": int(n.get(code, 0))}
    for split, frame in rows.items():
        frame["class_index"] = frame["code"].map({c: i for i, c in enumerate(splits[split])}).astype("int64")
        rows[split] = frame.sort_values(["class_index", "patient_id"], kind="stable").reset_index(drop=True)
    excluded = sorted(excluded, key=lambda e: e["code"])
    borrowed = {code: natural_split(spec.seed, code) for split in SPLITS for code in splits[split]
                if natural_split(spec.seed, code) != split}
    split_rule = {"rule": RULE, "stable": not borrowed, "outside_natural_split": dict(sorted(borrowed.items()))}
    return Plan(snap, splits, rows, counts, roles, excluded, form.policy, form.classes, form.outcomes, split_rule)


def build_taskset(home: Home, spec: TaskSetSpec) -> dict:
    """Write ``H/tasksets/<name>/`` and return its manifest; refuses a snapshot that failed validation."""
    if spec.kind == "target":  # compound activity: a table of compounds, not tensors (medmeta.chem.target_tasks)
        from medmeta.chem.target_tasks import build_target_taskset

        return build_target_taskset(home, spec)
    plan = plan_taskset(home, spec)
    snap, splits, rows, counts, roles, excluded = plan.snap, plan.splits, plan.rows, plan.counts, plan.roles, plan.excluded
    feature_spec, records = None, {}
    if spec.inputs in ("records", "both"):
        raw = {split: raw_features(frame, snap.tables, with_conditions=spec.kind == "drug") for split, frame in rows.items()}
        feature_spec = fit(raw["train"], rows["train"]["patient_id"].to_numpy(), spec.feature_min_patients_fraction)
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
        "label_policy": plan.policy,
        "classes": plan.classes,
        "split_rule": plan.split_rule,
        "splits": manifest_splits,
        "excluded": excluded,
        "features": {
            "record": feature_spec.as_dict() if feature_spec else None,
            "image": ({"size": image_size, "channels": 1, "dtype": "float16", "range": [0.0, 1.0],
                       "policy": case_rules.IMAGE_POLICY} if spec.inputs in ("images", "both") else None),
        },
    }
    if plan.outcomes is not None:
        manifest["outcomes"] = plan.outcomes
    write_manifest(folder, manifest)
    return manifest


def _short(rows: pd.DataFrame, codes: list[str], need: int) -> dict[str, int]:
    n = rows["code"].value_counts().reindex(codes, fill_value=0)
    return {str(c): int(k) for c, k in n.items() if k < need}


def _share_patients(cases: pd.DataFrame, splits: dict[str, list[str]], roles: dict[str, str], need: int):
    """Per-split policy: each split's patients shared out among its classes; a class left short is
    swapped with a class of another split (same validation role) when that leaves both splits with
    enough cases for every class. Returns the rows per split and the classes still short."""
    assign = case_rules.assign_within_split
    rows = {split: assign(cases, codes, need) for split, codes in splits.items()}
    for split in SPLITS:
        for code in sorted(_short(rows[split], splits[split], need)):
            if code not in splits[split] or code not in _short(rows[split], splits[split], need):
                continue
            for other in (s for s in SPLITS if s != split):
                swapped = False
                for partner in sorted(splits[other]):
                    if roles.get(partner) != roles.get(code):
                        continue
                    here = sorted([c for c in splits[split] if c != code] + [partner])
                    there = sorted([c for c in splits[other] if c != partner] + [code])
                    rows_here, rows_there = assign(cases, here, need), assign(cases, there, need)
                    if not _short(rows_here, here, need) and not _short(rows_there, there, need):
                        splits[split], splits[other] = here, there
                        rows[split], rows[other] = rows_here, rows_there
                        swapped = True
                        break
                if swapped:
                    break
    short = {code: n for split in SPLITS for code, n in _short(rows[split], splits[split], need).items()}
    return rows, short


def _excluded(code: str, cases: int, reason: str) -> dict:
    return {"code": code, "cases": cases, "reason": reason, "adaptation_only": cases > 0}


@dataclass
class _Formed:
    """The cases of a task set before its split, and what the manifest says about how they were formed."""

    cases: pd.DataFrame  # [patient_id, code, ...]; per-split: every (patient, class) pair
    excluded: list[dict]
    counts: dict[str, dict]
    policy: str
    classes: dict
    per_split: bool = False
    outcomes: dict | None = None


def _disease_cases(snap: ValidatedSnapshot, spec: TaskSetSpec, maps) -> _Formed:
    concepts = disease_concepts(snap.tables["conditions"], spec.system, maps, spec.conditions)
    known = set(snap.tables["patients"]["patient_id"])
    pairs, patients = case_rules.disease_pairs(concepts.rows[concepts.rows["patient_id"].isin(known)])
    rarest, _ = case_rules.disease_labels(concepts.rows[concepts.rows["patient_id"].isin(known)])
    if spec.inputs in ("images", "both"):
        images = case_rules.first_images(snap.tables["images"]).drop(columns=["site", "source"], errors="ignore")
        with_image = set(images["patient_id"])
        pairs_kept = pairs[pairs["patient_id"].isin(with_image)].merge(images, on="patient_id", how="inner")
        rarest_kept = rarest.merge(images, on="patient_id", how="inner")
    else:
        pairs_kept, rarest_kept = pairs, rarest
    need = spec.cases_needed
    by_pairs = pairs_kept.groupby("code")["patient_id"].nunique()
    by_rarest = rarest_kept.groupby("code")["patient_id"].nunique()
    enough = int((by_pairs >= need).sum())
    kept = int((by_rarest >= need).sum())
    policy = spec.label_policy
    if policy == "auto":
        policy = "rarest" if 2 * kept >= enough else "per-split"
        choice = (f"auto: the rarest-condition rule keeps {kept} of the {enough} classes with enough patients for an "
                  f"episode ({need}); {'at least' if policy == 'rarest' else 'fewer than'} half, so {policy}")
    else:
        choice = "settings"
    per_split = policy == "per-split"
    cases = pairs_kept if per_split else rarest_kept
    labelled = set(rarest["code"])
    per_class = by_pairs if per_split else by_rarest
    counts, excluded = {}, []
    for code in sorted(patients):
        n = int(per_class.get(code, 0))
        counts[code] = {"cases": n, "patients_with_condition": patients[code], "eligible": n >= need}
        if concepts.displays.get(code):
            counts[code]["display"] = concepts.displays[code]
        if n >= need:
            continue
        if n == 0 and spec.inputs in ("images", "both") and (per_split or code in labelled):
            reason = "no_image: none of its cases has an image"
        elif n == 0:
            reason = ("never_the_label: every patient with it has a rarer condition, which is their label "
                      f"({patients[code]} patients)")
        else:
            reason = f"too_few_cases: {n} cases, an episode needs {need} (shots {spec.shots} + queries {spec.queries})"
        excluded.append(_excluded(code, n, reason))
    for code, about in concepts.not_diseases.items():
        excluded.append({**_excluded(code, 0, f"not_a_disorder: its SNOMED CT display is tagged ({about['tag']}), not "
                                              f"(disorder) ({about['patients']} patients); --conditions all keeps it"),
                         "display": about["display"]})
    classes = {"system": concepts.describe(), "label_policy_choice": choice,
               "concept_maps": [m.describe() for m in maps], "conditions": spec.conditions}
    text = case_rules.PER_SPLIT_POLICY if per_split else case_rules.DISEASE_LABEL_POLICY
    return _Formed(cases, excluded, counts, text, classes, per_split)


def _drug_cases(snap: ValidatedSnapshot, spec: TaskSetSpec, maps) -> _Formed:
    rules = load_rules(spec.outcomes)  # a bad rule file stops here, naming file, rule and line
    concepts = drug_concepts(snap.tables["medication_exposures"], spec.system, maps)
    known = set(snap.tables["patients"]["patient_id"])
    exposures = concepts.rows[concepts.rows["patient_id"].isin(known)]
    check_user_rules(exposures, rules)
    labelled = label_outcomes(exposures, snap.tables["observations"], rules)
    report = drug_report(labelled, concepts.displays)
    cases = case_rules.drug_cases(labelled)
    need = spec.cases_needed
    counts, excluded = {}, []
    for code, about in report.items():
        yes, no = about["responders"], about["non_responders"]
        ok = min(no, yes) >= need
        counts[code] = {"cases": no + yes, "responders": yes, "non_responders": no, "eligible": ok}
        if about.get("display"):
            counts[code]["display"] = about["display"]
        if ok:
            about["usable"], about["why"] = True, f"{yes} responders and {no} non-responders, a task needs {need} of each"
            continue
        unknown = ", ".join(f"{n} {r}" for r, n in about["unknown"].items())
        reason = ((f"no_known_outcome: no exposure has a response or no_response outcome ({unknown or 'none'} unknown)")
                  if no + yes == 0 else
                  f"too_few_cases: {yes} responders and {no} non-responders, a task needs {need} of each "
                  f"(shots {spec.shots} + queries {spec.queries})" + (f"; unknown: {unknown}" if unknown else ""))
        about["usable"], about["why"] = False, reason
        excluded.append({**_excluded(code, no + yes, reason), "unknown": about["unknown"]})
    classes = {"system": concepts.describe(), "concept_maps": [m.describe() for m in maps],
               "outcome_rules": {**rules.describe(), "descriptions": {r.name: r.describe() for r in rules.rules}}}
    return _Formed(cases, excluded, counts, case_rules.DRUG_LABEL_POLICY, classes, False, report)


__all__ = ["build_taskset", "plan_taskset", "Plan", "NotEnoughClasses", "SPLITS", "ADAPTATION"]
