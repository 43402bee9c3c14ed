"""What an arrival of new cases changed for a task set's champion (flows/arrival.py decides from it).

Two questions, answered from the task set's manifest before and after the rebuild and from the
champion's model card (its ``task_set.splits`` name the classes it was meta-trained, validated
and tested on):

- **new classes**: the classes of the rebuilt ``adaptation`` split the champion never
  meta-trained on (not in its ``train`` split): each gets the champion adapted to it at once;
- **grown classes**: the classes of the rebuilt meta-learning splits (train, val, test) that have
  more cases than before the rebuild: they start a warm-started meta-training.

Nothing new (the same manifest before and after) gives neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medmeta.home import Home

META_SPLITS = ("train", "val", "test")
ADAPTATION = "adaptation"


@dataclass(frozen=True)
class ArrivalChanges:
    """One task set's answer: which classes to adapt to, which known ones got new cases."""

    taskset: str
    champion: str | None  # the champion's registry ref, None when the task set has none
    new_classes: list[str] = field(default_factory=list)
    grown_classes: dict[str, dict[str, int]] = field(default_factory=dict)  # code -> {"before": n, "after": m}
    rebuilt: bool = False  # the manifest changed

    def to_dict(self) -> dict:
        return {"taskset": self.taskset, "champion": self.champion, "new_classes": self.new_classes,
                "grown_classes": self.grown_classes, "rebuilt": self.rebuilt}


def class_cases(manifest: dict | None, splits: tuple[str, ...]) -> dict[str, int]:
    """Cases per class code over the given splits of a manifest (none for None)."""
    counts: dict[str, int] = {}
    for split, entry in ((manifest or {}).get("splits") or {}).items():
        if split in splits:
            for klass in entry["classes"]:
                counts[klass["code"]] = counts.get(klass["code"], 0) + int(klass["cases"])
    return counts


def champion_card(home: Home, taskset: str):
    """The task set's champion version (``registry.ModelVersion``), or None when it has none."""
    from medmeta import registry
    from medmeta.training.publish import registry_name

    try:
        return registry.resolve(home, f"{registry_name(taskset)}@champion")
    except registry.ModelNotFound:
        return None


def arrival_changes(home: Home, before: dict | None, after: dict) -> ArrivalChanges:
    """What the rebuild from ``before`` (None: not built yet) to ``after`` changed for the champion."""
    from medmeta.training.runs import manifest_digest

    name = after["name"]
    rebuilt = before is None or manifest_digest(before) != manifest_digest(after)
    champion = champion_card(home, name)
    if champion is None:
        return ArrivalChanges(name, None, rebuilt=rebuilt)
    trained_on = set(champion.card.get("task_set", {}).get("splits", {}).get("train", []))
    new = sorted(c for c in class_cases(after, (ADAPTATION,)) if c not in trained_on)
    earlier, now = class_cases(before, META_SPLITS + (ADAPTATION,)), class_cases(after, META_SPLITS)
    grown = {c: {"before": earlier.get(c, 0), "after": n} for c, n in sorted(now.items()) if n > earlier.get(c, 0)}
    return ArrivalChanges(name, champion.ref, new, grown if before is not None else {}, rebuilt)
