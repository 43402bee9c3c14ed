"""Task sets of kind ``target``: one binary task per activity task (``CHEMBL237_Ki``), split by target.

``medmeta tasks build --by target`` (``build_target_taskset``) reads the validated snapshot's
``compound_activities`` and writes

    H/tasksets/<name>/manifest.json      name, kind, seed, snapshot, the threshold rule, per task its
                                         split, target, threshold and counts, the refused tasks (written last)
    H/tasksets/<name>/compounds.parquet  task, target, compound_key, smiles, p_activity, label, split;
                                         sorted by task and compound_key (its SHA-256 in the manifest)

Label: a compound is active (1) when its pActivity is at or above the task's threshold: the task's
median pActivity, or the fixed pActivity ``threshold`` of the settings / ``--threshold``. A compound
with a binary label (a label column, ``active``) keeps it as it is. A task whose compounds all get one
class (every value equal, a label column all 0) is refused, named with its reason in the manifest's
``refused``; the rest go on.

Split: by group, the ChEMBL target id (``target``: Ki and EC50 of CHEMBL237 are on one side), with
``medmeta.tasksets.splits``' hash rule on the group key: deterministic by seed, and a target keeps its
split as other targets arrive (one target at least per split; a split short of one borrows).

``load_target_taskset(home, name)`` gives the tasks back as ``TargetTask`` records, checked against
the manifest's digest of the table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medmeta.atomic import atomic_path, write_json
from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.tasksets.splits import RULE, SPLITS, split_classes_explained
from medmeta.tasksets.store import FORMAT, MANIFEST, read_manifest, taskset_dir

TABLE = "compounds.parquet"
KIND = "target"
COLUMNS = ["task", "target", "compound_key", "smiles", "p_activity", "label", "split"]
MEDIAN_RULE = "label 1 (active) when the compound's pActivity >= the task's median pActivity; a binary label as given"
FIXED_RULE = "label 1 (active) when the compound's pActivity >= {value} (fixed); a binary label as given"


@dataclass(frozen=True)
class TargetPlan:
    """What a target task set will hold, before anything is written."""

    snapshot: str
    rows: pd.DataFrame  # COLUMNS, usable tasks only, sorted by task then compound_key
    tasks: dict[str, dict]  # task -> target, split, threshold, cases, actives, inactives
    refused: list[dict]  # task, target, cases, reason
    split_rule: dict


def label_tasks(activities: pd.DataFrame, threshold: float | None) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """``activities`` (compound_activities rows) with ``label`` (int) and each task's threshold."""
    frame = activities.sort_values(["task", "compound_key"], kind="mergesort").reset_index(drop=True)
    p = pd.to_numeric(frame["p_activity"], errors="coerce")
    medians = p.groupby(frame["task"]).median()
    thresholds = {task: (float(threshold) if threshold is not None else
                         None if pd.isna(medians.get(task)) else float(medians[task]))
                  for task in frame["task"].unique()}
    cut = frame["task"].map(thresholds).astype(float)
    by_value = (p >= cut).astype(int)
    given = frame["active"] if "active" in frame.columns else pd.Series(pd.NA, index=frame.index)
    labelled = given.notna()
    label = by_value.where(~labelled, given.fillna(False).astype(bool).astype(int))
    keep = labelled | p.notna()
    return frame.assign(label=label.astype("int64"))[keep], thresholds


def plan_target_taskset(home: Home, spec) -> TargetPlan:
    """Read the validated snapshot, label and split its tasks; every problem raised here, nothing written."""
    from medmeta.tasksets.snapshot import load_validated

    snap = load_validated(home)
    activities = snap.tables.get("compound_activities")
    if activities is None or activities.empty:
        raise MedmetaError(f"snapshot {snap.snapshot} holds no compound activities: ingest activity tables "
                           "(SMILES, a target or assay, an activity or label) first")
    frame, thresholds = label_tasks(activities, spec.threshold)
    tasks, refused = {}, []
    for task, rows in frame.groupby("task", sort=True):
        target = str(rows["target"].iloc[0])
        actives = int(rows["label"].sum())
        inactives = int(len(rows) - actives)
        if actives == 0 or inactives == 0:
            which = "active" if inactives == 0 else "inactive"
            refused.append({"task": task, "target": target, "cases": int(len(rows)),
                            "reason": f"single_class: every compound of task {task} is {which} under the threshold rule "
                                      f"({len(rows)} compounds); a task needs both classes"})
            continue
        tasks[task] = {"target": target, "threshold": thresholds.get(task), "cases": int(len(rows)),
                       "actives": actives, "inactives": inactives}
    if len({t["target"] for t in tasks.values()}) < len(SPLITS):
        raise MedmetaError(f"only {len({t['target'] for t in tasks.values()})} target(s) have a task with both classes; "
                           "meta-train, meta-validation and meta-test need one target each at least (refused: "
                           f"{', '.join(r['task'] for r in refused) or 'none'})")
    targets = {task: e["target"] for task, e in tasks.items()}
    if spec.test_tasks is not None:
        split_of, split_rule = split_by_protocol(targets, spec.seed, spec.test_tasks)
    else:
        split_of, split_rule = split_by_target(targets, spec.seed)
    for task, entry in tasks.items():
        entry["split"] = split_of[task]
    rows = frame[frame["task"].isin(tasks)].copy()
    rows["split"] = rows["task"].map(split_of)
    return TargetPlan(snap.snapshot, rows[COLUMNS].reset_index(drop=True), tasks, refused, split_rule)


def split_by_target(targets: dict[str, str], seed: int) -> tuple[dict[str, str], dict]:
    """Each task's split (``targets``: task -> its target, the group) and the rule as the manifest states it:
    ``medmeta.tasksets.splits``' hash rule on the target id, one target at least per split, so all tasks of a
    target share a split and a target keeps it as others arrive (unless ``borrowed``: a split short of one)."""
    explained = split_classes_explained(sorted(set(targets.values())), {}, seed, 1, "target")
    split_of = {group: split for split, members in explained["splits"].items() for group in members}
    rule = {"rule": RULE, "grouping": "target (the ChEMBL target id: all tasks of one target in one split)",
            "borrowed": explained["borrowed"], "stable": explained["stable"]}
    return {task: split_of[target] for task, target in targets.items()}, rule


def split_by_protocol(targets: dict[str, str], seed: int, test_tasks: int) -> tuple[dict[str, str], dict]:
    """The FS-Mol protocol's split (``medmeta.chem.protocol.split_tasks``, the one bench/molecules.py uses):
    exactly ``test_tasks`` meta-test tasks by whole targets, the rest meta-train, no meta-validation; drawn
    by ``seed`` from the sorted targets, so it is deterministic but not stable as targets arrive (a new
    target reshuffles the draw). A ``MedmetaError`` when the tasks cannot make it."""
    from medmeta.chem.protocol import split_tasks

    try:
        splits = split_tasks(sorted(targets), seed, n_test=test_tasks, n_val=0, groups_of=targets)
    except ValueError as error:
        raise MedmetaError(f"--test-tasks {test_tasks}: {error}") from None
    rule = {"rule": "protocol: exactly N meta-test tasks by whole targets, drawn by the seed, no meta-validation "
                    "(FS-Mol; medmeta.chem.protocol.split_tasks)", "test_tasks": test_tasks,
            "grouping": "target (the ChEMBL target id: all tasks of one target in one split)", "stable": False}
    return {task: split for split, members in splits.items() for task in members}, rule


def build_target_taskset(home: Home, spec) -> dict:
    """Write ``H/tasksets/<name>/`` (the table, then the manifest) and return the manifest."""
    import pyarrow as pa

    from medmeta.ingest.parts import write_parquet

    plan = plan_target_taskset(home, spec)
    folder = taskset_dir(home, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(plan.rows, preserve_index=False, schema=pa.schema([
        ("task", pa.string()), ("target", pa.string()), ("compound_key", pa.string()), ("smiles", pa.string()),
        ("p_activity", pa.float64()), ("label", pa.int64()), ("split", pa.string())]))
    with atomic_path(folder / TABLE) as tmp:
        write_parquet(table, tmp)
    digest = hashlib.sha256((folder / TABLE).read_bytes()).hexdigest()
    splits = {}
    for split in SPLITS:
        names = sorted(t for t, e in plan.tasks.items() if e["split"] == split)
        splits[split] = {"tasks": names, "targets": sorted({plan.tasks[t]["target"] for t in names}),
                         "cases": int(sum(plan.tasks[t]["cases"] for t in names)),
                         "classes": [{"code": t, **plan.tasks[t]} for t in names]}
    rule = (MEDIAN_RULE if spec.threshold is None else FIXED_RULE.format(value=spec.threshold))
    manifest = {
        "format": FORMAT, "name": spec.name, "snapshot": plan.snapshot, "kind": KIND, "inputs": spec.inputs,
        "ways": spec.ways, "shots": spec.shots, "queries": spec.queries, "seed": spec.seed,
        "threshold": {"rule": "median" if spec.threshold is None else "fixed", "value": spec.threshold,
                      "text": rule},
        "label_policy": rule,
        "tasks": {t: plan.tasks[t] for t in sorted(plan.tasks)},
        "refused": plan.refused,
        "excluded": [{"code": r["task"], "cases": r["cases"], "reason": r["reason"], "adaptation_only": False}
                     for r in plan.refused],
        "splits": splits, "split_rule": plan.split_rule,
        "classes": {"system": {"short": "chembl-target-task", "uri": None}},
        "features": {"record": None, "image": None},
        "table": {"file": TABLE, "sha256": digest, "rows": int(table.num_rows)},
        "counts": {"tasks": len(plan.tasks), "refused": len(plan.refused), "rows": int(table.num_rows),
                   "compounds": int(plan.rows["compound_key"].nunique())},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class TargetTask:
    """One binary task: its compounds (keys, standardised SMILES), pActivities and labels, in compound_key order."""

    task: str  # CHEMBL237_Ki
    target: str  # CHEMBL237 (the group)
    split: str  # train | val | test
    threshold: float | None  # the pActivity cut (None: labels given as such)
    compound_keys: tuple[str, ...]
    smiles: tuple[str, ...]
    p_activity: np.ndarray  # float64 (n,), NaN for label-only compounds
    labels: np.ndarray  # int64 (n,), 1 = active

    def __len__(self) -> int:
        return len(self.compound_keys)


@dataclass(frozen=True)
class TargetTaskSet:
    manifest: dict
    tasks: dict[str, TargetTask]  # by task id, sorted

    def split(self, name: str) -> list[TargetTask]:
        """The tasks of split ``name`` (train, val or test), by task id."""
        return [t for t in self.tasks.values() if t.split == name]


def load_target_taskset(home: Home, name: str) -> TargetTaskSet:
    """The target task set ``name``; a ``MedmetaError`` when it is not one or its table is not the one built."""
    manifest = read_manifest(home, name)
    if manifest.get("kind") != KIND:
        raise MedmetaError(f"task set {name!r} is of kind {manifest.get('kind')!r}, not target: build one with "
                           "`medmeta tasks build --by target`")
    path = taskset_dir(home, name) / manifest["table"]["file"]
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != manifest["table"]["sha256"]:
        raise MedmetaError(f"{path}: missing or not the file the manifest lists; build the task set again")
    frame = pd.read_parquet(path)
    tasks = {}
    for task, rows in frame.groupby("task", sort=True):
        about = manifest["tasks"][task]
        tasks[task] = TargetTask(task, about["target"], about["split"], about["threshold"],
                                 tuple(rows["compound_key"]), tuple(rows["smiles"]),
                                 rows["p_activity"].to_numpy(np.float64), rows["label"].to_numpy(np.int64))
    return TargetTaskSet(manifest, tasks)


__all__ = ["build_target_taskset", "plan_target_taskset", "split_by_target", "split_by_protocol", "load_target_taskset", "label_tasks", "TargetTask",
           "TargetTaskSet", "TargetPlan"]
