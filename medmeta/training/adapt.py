"""Adapt a task set's champion meta-model to each class left out of meta-training, and publish it.

The task set's ``adaptation`` split holds the classes with too few cases for an episode (rare
diseases; drugs with too few responders or non-responders). For each one:

- **disease**: an N-way model adapts to the rare disease plus the N-1 meta-test diseases with the
  most cases (ties by code) as references, K support cases each, K = min(task set shots, the rare
  disease's cases); label order: the rare disease, then the references.
- **drug**: a binary model per drug, labels ``no_response`` (0) and ``response`` (1), K cases of
  each, K = min(shots, fewest of the two); a drug lacking either outcome is skipped.

Support cases are the first K of each class in the task set's order (by pseudonymous patient id).
The adapted state (``learner.adapted_state``: adapted weights, prototypes or support embeddings,
never an input) is published as ``<task set model>-<class slug>`` with ``parent`` = the champion.
Its metrics: ``support_accuracy`` (the support cases themselves, optimistic) and, when the class has
cases beyond K, ``held_out_accuracy`` on those and up to ``queries`` unseen cases of each other class.
A version of the same parent, classes and support cases is found, not published again; a new
version from the current champion takes the ``champion`` alias (an adapted model follows its parent).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Collection

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.publish import registry_name

OUTCOMES = ["no_response", "response"]  # drug label 0, 1
ADAPTATION = "adaptation"


@dataclass(frozen=True)
class AdaptationPlan:
    """Which cases adapt the model to ``target``: (split, row, label) each; label i is ``classes[i]``."""

    target: str
    kind: str
    classes: list[str]
    roles: list[str]
    shots: int
    support: list[tuple[str, int, int]] = field(default_factory=list)
    held_out: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: str | None = None


def _rows(mask) -> list[int]:
    return [int(i) for i in mask.nonzero().flatten().tolist()]


def plan_adaptations(tasks) -> list[AdaptationPlan]:
    """One plan per class of the task set's adaptation split (none when it has no such split)."""
    manifest = tasks.manifest
    split = tasks.splits.get(ADAPTATION)
    if split is None:
        return []
    shots, queries, ways = int(manifest["shots"]), int(manifest["queries"]), int(manifest["ways"])
    if manifest["kind"] == "drug":
        return [_drug_plan(split, i, code, shots, queries, ways) for i, code in enumerate(split.codes)]
    test = tasks.splits.get("test")
    refs = [] if test is None else sorted(range(len(test.codes)), key=lambda i: (-int((test.labels == i).sum()),
                                                                                 test.codes[i]))[:ways - 1]
    return [_disease_plan(split, i, code, test, refs, shots, queries, ways) for i, code in enumerate(split.codes)]


def _disease_plan(split, index, code, test, refs, shots, queries, ways) -> AdaptationPlan:
    rows = _rows(split.labels == index)
    k = min(shots, len(rows))
    classes = [code] + [test.codes[r] for r in refs]
    plan = AdaptationPlan(code, "disease", classes, ["adapted"] + ["reference"] * len(refs), k)
    if len(refs) < ways - 1:
        return AdaptationPlan(code, "disease", classes, plan.roles, k,
                              skipped=f"a {ways}-way model needs {ways - 1} reference diseases in the meta-test split, "
                                      f"it has {len(refs)}")
    plan.support.extend((ADAPTATION, r, 0) for r in rows[:k])
    plan.held_out.extend((ADAPTATION, r, 0) for r in rows[k:])
    for label, ref in enumerate(refs, start=1):
        ref_rows = _rows(test.labels == ref)
        plan.support.extend(("test", r, label) for r in ref_rows[:k])
        if len(rows) > k:
            plan.held_out.extend(("test", r, label) for r in ref_rows[k:k + queries])
    return plan


def _drug_plan(split, index, code, shots, queries, ways) -> AdaptationPlan:
    mine = split.tasks == index
    by_label = [_rows(mine & (split.labels == label)) for label in (0, 1)]
    k = min([shots] + [len(r) for r in by_label])
    plan = AdaptationPlan(code, "drug", list(OUTCOMES), ["outcome", "outcome"], k)
    if ways != 2:
        return AdaptationPlan(code, "drug", plan.classes, plan.roles, k,
                              skipped=f"drug models are binary, this one is {ways}-way")
    if k == 0:
        missing = " and ".join(o for o, r in zip(OUTCOMES, by_label) if not r)
        return AdaptationPlan(code, "drug", plan.classes, plan.roles, k, skipped=f"no case with outcome {missing}")
    for label, rows in enumerate(by_label):
        plan.support.extend((ADAPTATION, r, label) for r in rows[:k])
        plan.held_out.extend((ADAPTATION, r, label) for r in rows[k:k + queries])
    return plan


def adapted_name(parent: str, target: str) -> str:
    """``<parent>-<target slug>``, shortened with a digest to the registry's 64 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-") or "class"
    name = f"{parent}-{slug}"
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(parent.encode()).hexdigest()[:8]
    return f"{parent[:64 - len(slug) - len(digest) - 2].rstrip('-_')}-{digest}-{slug}"


def _gather(tasks, cases: list[tuple[str, int, int]]):
    import torch

    def pick(inputs, rows):
        return {k: v[rows] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[rows]

    parts, labels = [], []
    for split in dict.fromkeys(s for s, _, _ in cases):
        rows = [r for s, r, _ in cases if s == split]
        parts.append(pick(tasks.splits[split].inputs, torch.tensor(rows)))
        labels += [label for s, _, label in cases if s == split]
    if isinstance(parts[0], dict):
        x = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    else:
        x = torch.cat(parts)
    return x, torch.tensor(labels, dtype=torch.int64)


def support_digest(tasks, plan: AdaptationPlan) -> str:
    """The SHA-256 of the support cases' pseudonymous patient ids per class (the ids stay out of the card)."""
    ids = {plan.classes[label]: [] for label in range(len(plan.classes))}
    for split, row, label in plan.support:
        ids[plan.classes[label]].append(tasks.splits[split].patient_ids[row])
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()


def _accuracy(learner, state, x, y) -> float:
    return float((learner.predict_with_state(state, x).argmax(-1) == y).float().mean())


def check_no_inputs(state: dict, x) -> None:
    """Refuse a state holding a tensor shaped like the support inputs: raw patient data never gets published."""
    shapes = {tuple(v.shape) for v in x.values()} if isinstance(x, dict) else {tuple(x.shape)}
    for key, tensor in state.items():
        if tuple(tensor.shape) in shapes:
            raise MedmetaError(f"the adapted state's tensor {key} {list(tensor.shape)} is shaped like patient "
                               "inputs; nothing was published")


def _existing(home: Home, name: str, parent, plan: AdaptationPlan, digest: str):
    from medmeta import registry

    if name not in registry.model_names(home):
        return None
    for number in reversed(registry.versions(home, name)):
        version = registry.resolve(home, f"{name}@{number}")
        card = version.card
        if (card.get("parent", {}).get("name") == parent.name and card["parent"].get("version") == parent.version
                and card.get("adaptation", {}).get("support_digest") == digest
                and card["adaptation"].get("label_order") == plan.classes):
            return version
    return None


def adapt_taskset(home: Home, taskset: str, only: Collection[str] | None = None) -> list[dict]:
    """Adapt ``taskset``'s champion to each of its adaptation classes; one summary per class.

    ``only``: adapt just these classes (an arrival's new ones, flows/arrival.py); then a champion
    meta-trained on an earlier build of the task set is adapted too, when its inputs (spec features)
    are this build's."""
    import torch

    from medmeta import registry
    from medmeta.tasksets.store import load_taskset
    from medmeta.training.models import build_learner
    from medmeta.training.runs import manifest_digest

    tasks = load_taskset(home, taskset)
    parent_name = registry_name(taskset)
    try:
        parent = registry.resolve(home, f"{parent_name}@champion")
    except registry.ModelNotFound:
        return [{"taskset": taskset, "skipped": f"model {parent_name} has no champion to adapt"}]
    same_build = parent.card.get("task_set", {}).get("digest") == manifest_digest(tasks.manifest)
    if not same_build and (only is None or parent.card["config"]["spec"].get("features") != tasks.manifest["features"]):
        return [{"taskset": taskset, "skipped": f"champion {parent.ref} was trained on another build of task set "
                                                f"{taskset}; train and publish on this one first"}]
    spec = parent.card["config"]["spec"]
    learner = build_learner(spec)
    learner.load_state_dict(parent.load_weights())
    learner.eval()
    results = []
    for plan in plan_adaptations(tasks):
        if only is not None and plan.target not in only:
            continue
        head = {"taskset": taskset, "target": plan.target, "parent": parent.ref, "classes": plan.classes}
        if plan.skipped:
            results.append({**head, "skipped": plan.skipped})
            continue
        name = adapted_name(parent_name, plan.target)
        digest = support_digest(tasks, plan)
        found = _existing(home, name, parent, plan, digest)
        if found is not None:
            results.append({**head, **_summary(found), "cached": True})
            continue
        torch.manual_seed(0)
        sx, sy = _gather(tasks, plan.support)
        state = learner.adapted_state(sx, sy)
        check_no_inputs(state, sx)
        metrics = {"support_accuracy": round(_accuracy(learner, state, sx, sy), 6)}
        if plan.held_out:
            hx, hy = _gather(tasks, plan.held_out)
            metrics["held_out_accuracy"] = round(_accuracy(learner, state, hx, hy), 6)
        card = _card(tasks, parent, spec, plan, name, digest, metrics)
        version = registry.publish(home, name, state, card,
                                   gate=registry.Gate(metric="support_accuracy", higher_is_better=True, margin=0.0))
        if version.card["gate"]["decision"] != "champion":
            registry.set_alias(home, name, "champion", version.version,
                               reason=f"adapted from {parent.ref}, the current champion of {parent_name}: "
                                      "an adapted model follows its parent")
        results.append({**head, **_summary(version), "cached": False})
    return results


def _card(tasks, parent, spec: dict, plan: AdaptationPlan, name: str, digest: str, metrics: dict) -> dict:
    from medmeta import registry

    manifest = tasks.manifest
    counts = {c: sum(1 for _, _, label in plan.support if label == i) for i, c in enumerate(plan.classes)}
    held = len(plan.held_out)
    if plan.kind == "disease":
        what = (f"{len(plan.classes)}-way classification of the rare disease {plan.target} against the reference "
                f"diseases {', '.join(plan.classes[1:])}")
    else:
        what = f"response to the drug {plan.target} (no_response / response)"
    return {
        "algorithm": spec["algorithm"],
        "purpose": (f"{what} from {spec['inputs']}: {parent.ref} adapted on {plan.shots} support cases per class; "
                    "predicts without a support set"),
        "config": {"spec": spec},
        "metrics": metrics,
        "evaluation_id": registry.evaluation_id(parent.card["weights"]["sha256"], 0, 0, classes=plan.classes,
                                                support=digest),
        "parent": parent.ref,
        "adaptation": {
            "kind": plan.kind, "target": plan.target, "label_order": plan.classes,
            "classes": [{"code": c, "label": i, "role": r, "support_cases": counts[c]}
                        for i, (c, r) in enumerate(zip(plan.classes, plan.roles))],
            "shots": plan.shots, "support_digest": digest, "held_out_cases": held, "needs_support": False,
            "state": "metalearn adapted_state: params.* (the network) plus prototypes (protonet) or support "
                     "embeddings and labels (matchingnet); no patient inputs",
            "metrics_note": ("support_accuracy is measured on the support cases themselves (optimistic); "
                             + ("held_out_accuracy on cases not used for adaptation" if held else
                                "there were no cases left to hold out")),
        },
        "task_set": {"name": manifest["name"], "digest": parent.card["task_set"]["digest"], "split": ADAPTATION},
        "snapshot": manifest["snapshot"],
        "dicom_modalities": parent.card.get("dicom_modalities"),
        "usage": f"medmeta predict --model {name} --query QUERY  (no --support needed)",
    }


def _summary(version) -> dict:
    card = version.card
    return {"name": version.name, "version": version.version, "ref": version.ref,
            "decision": card["gate"]["decision"], "metrics": card["metrics"],
            "support": {c["code"]: c["support_cases"] for c in card["adaptation"]["classes"]}}
