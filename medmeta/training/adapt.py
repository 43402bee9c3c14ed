"""Adapt a task set's champion meta-model to each class left out of meta-training, and publish it.

The task set's ``adaptation`` split holds the classes with too few cases for an episode (rare
diseases; drugs with too few responders or non-responders). For each one:

- **disease**: an N-way model adapts to the rare disease plus N-1 meta-test diseases as references:
  the first by their place in the stable split order (``medmeta.tasksets.splits.place(seed,
  code)``), so cases arriving for other classes never change them (a new meta-test class can, only
  when its place comes first); K support cases each, K = min(task set shots, the rare disease's
  cases); label order: the rare disease, then the references.
- **drug**: a binary model per drug, labels ``no_response`` (0) and ``response`` (1), K cases of
  each, K = min(shots, fewest of the two); a drug lacking either outcome is skipped.

Support cases are the first K of each class in the task set's order (by pseudonymous patient id).
The adapted state (``learner.adapted_state``: adapted weights, prototypes or support embeddings,
never an input) is published as ``<task set model>-<class slug>`` with ``parent`` = the champion.

**Its quality estimate** (the gate metric, :func:`loo_estimate`): ``loo_accuracy``, leave-one-out
over the model's own cases. Each support case is left out in turn (when its class keeps at least
one other support case), the parent is adapted on the rest and predicts it; cases beyond K (the
rare class's, and up to ``queries`` unseen cases of each reference when the rare class has them)
are predicted by the published state. ``loo_accuracy`` is ``{"mean", "ci_low", "ci_high"`` (Wilson,
95%), ``"n"`` (predictions), ``"correct"}``; ``loo_cases`` says on how many cases it is based and
``loo_target_cases`` how many of them are the adapted class's own. A class with a single case (a
drug with one case of an outcome) has no estimate: nothing can be left out; the card says so.
``support_accuracy`` (the support cases themselves, optimistic) and ``held_out_accuracy`` (cases
beyond K only) stay as information.

**The gate** for adapted versions is ``Gate(metric="loo_accuracy", rule="estimate")``
(``medmeta.registry.gate``): a new version becomes its model's champion when the lower end of its
95% interval is not below the champion's -- at equal accuracy the one based on more cases wins, at
an equal lower end the newer one (the current parent's). Otherwise it is the challenger. The
registry guarantees a version never holds both aliases.

A version of the same parent, classes and support cases is found, not published again.

**Retirement** (:func:`retire_stale`): an adapted model whose class is no longer in the task set's
adaptation split (it gained enough cases to be meta-trained or evaluated, or left the task set) is
retired: both aliases cleared and its card says why and when (``registry.retire``); idempotent.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.tasksets.splits import place
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
    seed = int(manifest["seed"])
    refs = [] if test is None else sorted(range(len(test.codes)), key=lambda i: (place(seed, test.codes[i]),
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


GATE_METRIC = "loo_accuracy"
Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (95% by default)."""
    if n <= 0:
        raise ValueError("no trials")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def loo_estimate(learner, tasks, plan: AdaptationPlan, state: dict) -> dict:
    """The adapted model's quality on its own cases (see the module's docstring): ``loo_accuracy``
    (with its Wilson interval), ``loo_cases`` and ``loo_target_cases``; ``{}`` when nothing of the
    adapted class can be predicted without having adapted on it."""
    import torch

    labels = [label for _, _, label in plan.support]
    target_labels = {0} if plan.kind == "disease" else {0, 1}  # a drug model's cases are all the drug's
    outcomes: list[tuple[int, bool]] = []  # (true label, right)
    if plan.held_out:
        hx, hy = _gather(tasks, plan.held_out)
        right = learner.predict_with_state(state, hx).argmax(-1) == hy
        outcomes += list(zip(hy.tolist(), right.tolist()))
    for i, case in enumerate(plan.support):
        if labels.count(case[2]) < 2:
            continue  # its class would keep no support case
        torch.manual_seed(0)
        rx, ry = _gather(tasks, plan.support[:i] + plan.support[i + 1:])
        qx, qy = _gather(tasks, [case])
        fold = learner.adapted_state(rx, ry)
        outcomes.append((case[2], bool((learner.predict_with_state(fold, qx).argmax(-1) == qy).all())))
    target = sum(1 for label, _ in outcomes if label in target_labels)
    if not target:
        return {}
    n, correct = len(outcomes), sum(1 for _, right in outcomes if right)
    low, high = wilson(correct, n)
    return {GATE_METRIC: {"mean": round(correct / n, 6), "ci_low": round(low, 6), "ci_high": round(high, 6),
                          "ci_level": 0.95, "n": n, "correct": correct},
            "loo_cases": n, "loo_target_cases": target}


def adapt_taskset(home: Home, taskset: str, *, targets: list[str] | None = None,
                  parent_build: str = "same") -> list[dict]:
    """Adapt ``taskset``'s champion to each of its adaptation classes (or to ``targets`` among them)
    and retire adapted models whose class left the adaptation split; one summary per class.

    ``parent_build="same"`` (the pipeline) adapts only a champion trained on this build of the task
    set; ``"compatible"`` (the arrival fast path, after the task set was rebuilt with new cases)
    also one trained on an earlier build with the same input features; a class that champion
    meta-trained on is skipped, with the reason. Each summary has ``decision`` (the gate's) and
    ``alias`` (the alias the version holds now: champion, challenger or None); a retirement has
    ``decision: "retired"``.
    """
    import torch

    from medmeta import registry
    from medmeta.tasksets.store import load_taskset
    from medmeta.training.models import build_learner
    from medmeta.training.runs import manifest_digest

    if parent_build not in ("same", "compatible"):
        raise MedmetaError(f"parent_build must be 'same' or 'compatible', not {parent_build!r}")
    tasks = load_taskset(home, taskset)
    results = retire_stale(home, taskset, tasks.manifest)
    parent_name = registry_name(taskset)
    try:
        parent = registry.resolve(home, f"{parent_name}@champion")
    except registry.ModelNotFound:
        return results + [{"taskset": taskset, "skipped": f"model {parent_name} has no champion to adapt"}]
    spec = parent.card["config"]["spec"]
    plans = [p for p in plan_adaptations(tasks) if targets is None or p.target in targets]
    if parent.card.get("task_set", {}).get("digest") != manifest_digest(tasks.manifest):
        trained_on = set(parent.card.get("task_set", {}).get("splits", {}).get("train", []))
        if parent_build == "same":
            return results + [{"taskset": taskset, "skipped": f"champion {parent.ref} was trained on another build "
                                                              f"of task set {taskset}; train and publish on this one first"}]
        if spec.get("features") != tasks.manifest["features"]:
            return results + [{"taskset": taskset, "skipped": f"champion {parent.ref} was trained on another build "
                                                              f"of task set {taskset} with other input features"}]
        plans = [p if p.target not in trained_on else
                 AdaptationPlan(p.target, p.kind, p.classes, p.roles, p.shots,
                                skipped=f"champion {parent.ref} meta-trained on {p.target} (an earlier build)")
                 for p in plans]
    learner = build_learner(spec)
    learner.load_state_dict(parent.load_weights())
    learner.eval()
    for plan in plans:
        head = {"taskset": taskset, "target": plan.target, "parent": parent.ref, "classes": plan.classes}
        if plan.skipped:
            results.append({**head, "skipped": plan.skipped})
            continue
        name = adapted_name(parent_name, plan.target)
        digest = support_digest(tasks, plan)
        found = _existing(home, name, parent, plan, digest)
        if found is not None:
            aliases = registry.read_aliases(home, name)
            if aliases.get("retired") or (aliases["champion"] is None and aliases["challenger"] is None):
                registry.set_alias(home, name, "champion", found.version,
                                   reason=f"{plan.target} is an adaptation class of {taskset} again")
            results.append({**head, **_summary(home, registry.resolve(home, found.ref)), "cached": True})
            continue
        torch.manual_seed(0)
        sx, sy = _gather(tasks, plan.support)
        state = learner.adapted_state(sx, sy)
        check_no_inputs(state, sx)
        metrics = {"support_accuracy": round(_accuracy(learner, state, sx, sy), 6)}
        if plan.held_out:
            hx, hy = _gather(tasks, plan.held_out)
            metrics["held_out_accuracy"] = round(_accuracy(learner, state, hx, hy), 6)
        metrics.update(loo_estimate(learner, tasks, plan, state))
        card = _card(tasks, parent, spec, plan, name, digest, metrics)
        version = registry.publish(home, name, state, card, gate=registry.Gate(metric=GATE_METRIC, rule="estimate"))
        results.append({**head, **_summary(home, version), "cached": False})
    return results


def adapted_models(home: Home, taskset: str) -> dict[str, str]:
    """The adapted models of ``taskset``'s champion lineage: model name -> the class it adapts to."""
    from medmeta import registry

    prefix, out = registry_name(taskset) + "-", {}
    for name in registry.model_names(home):
        if not name.startswith(prefix):
            continue
        card = registry.resolve(home, f"{name}@{registry.versions(home, name)[-1]}").card
        if card.get("adaptation") and card.get("task_set", {}).get("name") == taskset:
            out[name] = card["adaptation"]["target"]
    return out


def retire_stale(home: Home, taskset: str, manifest: dict | None = None) -> list[dict]:
    """Retire each adapted model of ``taskset`` whose class is no longer in its adaptation split;
    one summary per model retired now (``cached: True`` when it already was). Idempotent."""
    from medmeta import registry
    from medmeta.tasksets.store import read_manifest

    manifest = manifest or read_manifest(home, taskset)
    where = {c["code"]: split for split, entry in manifest["splits"].items() for c in entry["classes"]}
    out = []
    for name, target in sorted(adapted_models(home, taskset).items()):
        split = where.get(target)
        if split == ADAPTATION:
            continue
        if split is None:
            reason = f"{target} is no longer a class of task set {taskset} (snapshot {manifest['snapshot']})"
        else:
            role = {"train": "meta-trained", "val": "meta-validated", "test": "meta-tested"}[split]
            reason = (f"{target} now has enough cases to be {role}: task set {taskset} (snapshot "
                      f"{manifest['snapshot']}) holds it in split {split}, no longer in {ADAPTATION}")
        detail = {"taskset": taskset, "target": target, "split": split, "snapshot": manifest["snapshot"]}
        before = registry.read_aliases(home, name).get("retired")
        cached = bool(before) and before.get("detail", {}).get("target") == target and \
            before.get("detail", {}).get("split") == split and before.get("detail", {}).get("taskset") == taskset
        if not cached:
            registry.retire(home, name, reason=reason, detail=detail)
        last = registry.resolve(home, f"{name}@{registry.versions(home, name)[-1]}")
        out.append({"taskset": taskset, "target": target, "name": name, "version": last.version, "ref": last.ref,
                    "parent": f"{last.card['parent']['name']}@{last.card['parent']['version']}",
                    "decision": "retired", "alias": None, "retired": last.card["retired"], "reason": reason,
                    "metrics": last.card["metrics"], "support": {}, "cached": cached})
    return out


def _card(tasks, parent, spec: dict, plan: AdaptationPlan, name: str, digest: str, metrics: dict) -> dict:
    from medmeta import registry
    from medmeta.training.runs import manifest_digest

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
                    f"predicts without a support set. Quality: {estimate_text(metrics)}"),
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
            "metrics_note": (f"gate metric {GATE_METRIC}: {estimate_text(metrics)}; each support case left out in "
                             "turn and predicted after adapting on the rest, cases beyond K predicted by this state. "
                             "support_accuracy is measured on the support cases themselves (optimistic); "
                             + ("held_out_accuracy on cases not used for adaptation" if held else
                                "there were no cases beyond K to hold out")),
            "estimate": estimate_text(metrics),
        },
        "task_set": {"name": manifest["name"], "digest": manifest_digest(manifest), "split": ADAPTATION,
                     "parent_digest": parent.card["task_set"]["digest"]},  # differ on the fast path (a new build)
        "snapshot": manifest["snapshot"],
        "dicom_modalities": parent.card.get("dicom_modalities"),
        "usage": f"medmeta predict --model {name} --query QUERY  (no --support needed)",
    }


def _summary(home: Home, version) -> dict:
    from medmeta import registry

    card = version.card
    aliases = registry.read_aliases(home, version.name)
    alias = next((a for a in registry.ALIASES if aliases[a] == version.version), None)
    return {"name": version.name, "version": version.version, "ref": version.ref,
            "decision": card["gate"]["decision"], "alias": alias, "gate_reason": card["gate"]["reason"],
            "metrics": card["metrics"], "estimate": estimate_text(card["metrics"]),
            "support": {c["code"]: c["support_cases"] for c in card["adaptation"]["classes"]}}


def estimate_text(metrics: dict) -> str:
    """``loo_accuracy`` in words: "leave-one-out accuracy 0.75 [0.41, 0.93] (95%), based on 8 cases (3 of the class)"."""
    entry = metrics.get(GATE_METRIC)
    if not isinstance(entry, dict):
        return "no leave-one-out estimate: too few cases to leave one out"
    return (f"leave-one-out accuracy {entry['mean']:.3g} [{entry['ci_low']:.3g}, {entry['ci_high']:.3g}] (95%, "
            f"Wilson), based on {metrics['loo_cases']} cases ({metrics['loo_target_cases']} of the class)")
