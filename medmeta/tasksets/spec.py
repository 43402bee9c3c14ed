"""What a task set is asked to be: by disease or drug, which inputs, ways/shots/queries, seed, name,
and how classes, labels and features are formed (class system, concept maps, outcome rules, label
policy, which conditions are diseases, how common an analyte must be to be a feature)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from medmeta.errors import MedmetaError

KINDS = ("disease", "drug", "target")
INPUTS = ("images", "records", "both", "compounds")
DEFAULTS = {"disease": dict(ways=3, shots=5, queries=3), "drug": dict(ways=2, shots=5, queries=5),
            "target": dict(ways=2, shots=8, queries=8)}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LABEL_POLICIES = ("auto", "rarest", "per-split")
CONDITION_FILTERS = ("disorders", "all")
FEATURE_MIN_PATIENTS_FRACTION = 0.2


@dataclass(frozen=True)
class TaskSetSpec:
    kind: str  # disease | drug | target (compound activity: medmeta.chem.target_tasks)
    inputs: str  # images | records | both (drug: records only; target: compounds only)
    ways: int
    shots: int
    queries: int
    seed: int
    name: str
    system: str = "auto"  # the class code system: auto, or any spelling systems.py knows, or a URI
    concept_maps: tuple[str, ...] = ()  # map files, applied in order before classes are formed
    outcomes: str | None = None  # drug tasks: a user's outcome rule file (None: medmeta/config/outcomes.yaml)
    label_policy: str = "auto"  # disease tasks: auto | rarest | per-split (medmeta.tasksets.cases)
    conditions: str = "disorders"  # disease tasks: disorders | all (medmeta.tasksets.classes)
    feature_min_patients_fraction: float = FEATURE_MIN_PATIENTS_FRACTION
    threshold: float | None = None  # target tasks: a fixed pActivity cut (None: each task's median)
    test_tasks: int | None = None  # target tasks: exactly this many meta-test tasks, none meta-val (FS-Mol protocol)

    @property
    def cases_needed(self) -> int:
        """Cases a class needs for one episode: shots + queries."""
        return self.shots + self.queries

    def as_dict(self) -> dict:
        return asdict(self)


# The keys of a pipeline settings' task-set entry (medmeta/config/pipeline.yaml ``tasksets``): ``by`` and
# make_spec's other arguments, under the names the CLI's options have.
TASKSET_OPTIONS = ("system", "concept_maps", "outcomes", "label_policy", "conditions", "feature_min_patients_fraction",
                   "threshold", "test_tasks")
TASKSET_KEYS = ("by", "inputs", "ways", "shots", "queries", "seed", "name", *TASKSET_OPTIONS)


def make_spec(kind: str, inputs: str | None = None, ways: int | None = None, shots: int | None = None,
              queries: int | None = None, seed: int = 0, name: str | None = None, system: str | None = None,
              concept_maps=(), outcomes: str | None = None, label_policy: str | None = None,
              conditions: str | None = None, feature_min_patients_fraction: float | None = None,
              threshold: float | None = None, test_tasks: int | None = None) -> TaskSetSpec:
    """A checked spec, defaults filled in; a ``MedmetaError`` naming any bad argument.

    Concept map and outcome rule files must exist here; their content is checked when the task set
    is planned (``medmeta.tasksets.build.plan_taskset``), before anything is written."""
    if kind not in KINDS:
        raise MedmetaError(f"--by must be one of {', '.join(KINDS)}, got {kind!r}")
    inputs = inputs or {"disease": "images", "drug": "records", "target": "compounds"}[kind]
    if inputs not in INPUTS:
        raise MedmetaError(f"--inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if kind == "drug" and inputs != "records":
        raise MedmetaError("drug tasks predict response from the patient's record: --inputs must be records")
    if (kind == "target") != (inputs == "compounds"):
        raise MedmetaError("target tasks (--by target) take compounds: --inputs must be compounds, and only they do")
    if threshold is not None and kind != "target":
        raise MedmetaError("--threshold applies to target tasks (--by target)")
    if threshold is not None and not 0 <= float(threshold) <= 14:
        raise MedmetaError(f"--threshold is a pActivity (-log10 molar) in [0, 14], got {threshold!r}")
    if test_tasks is not None and kind != "target":
        raise MedmetaError("--test-tasks applies to target tasks (--by target)")
    if test_tasks is not None and int(test_tasks) < 1:
        raise MedmetaError(f"--test-tasks must be 1 or more, got {test_tasks!r}")
    d = DEFAULTS[kind]
    ways, shots, queries = (d["ways"] if ways is None else ways, d["shots"] if shots is None else shots,
                            d["queries"] if queries is None else queries)
    if kind in ("drug", "target") and ways != 2:
        raise MedmetaError(f"{kind} tasks are binary: --ways must be 2, got {ways}")
    if seed < 0:
        raise MedmetaError(f"--seed must be 0 or more, got {seed}")
    if ways < 2 or shots < 1 or queries < 1:
        raise MedmetaError(f"need --ways >= 2, --shots >= 1, --queries >= 1; got {ways}, {shots}, {queries}")
    shape = "" if kind == "target" else f"-{ways}w{shots}s{queries}q"  # target tasks: support sizes are the evaluation's
    name = name or f"{kind}-{inputs}{shape}-seed{seed}" + (
        f"-p{float(threshold):g}" if threshold is not None else "") + (
        f"-test{int(test_tasks)}" if test_tasks is not None else "")
    if not NAME.match(name):
        raise MedmetaError(f"task set name {name!r}: letters, digits, '.', '_' and '-' only (at most 100)")
    system = (system or "auto").strip()
    label_policy = label_policy or "auto"
    if label_policy not in LABEL_POLICIES:
        raise MedmetaError(f"--label-policy must be one of {', '.join(LABEL_POLICIES)}, got {label_policy!r}")
    conditions = conditions or "disorders"
    if conditions not in CONDITION_FILTERS:
        raise MedmetaError(f"--conditions must be one of {', '.join(CONDITION_FILTERS)}, got {conditions!r}")
    fraction = FEATURE_MIN_PATIENTS_FRACTION if feature_min_patients_fraction is None else feature_min_patients_fraction
    if not 0 <= float(fraction) <= 1:
        raise MedmetaError(f"--feature-min-patients must be a fraction in [0, 1], got {fraction!r}")
    maps = tuple(str(Path(p).resolve()) for p in (concept_maps or ()))
    for path in maps + ((str(Path(outcomes).resolve()),) if outcomes else ()):
        if not Path(path).is_file():
            raise MedmetaError(f"{path}: no such file")
    if outcomes and kind != "drug":
        raise MedmetaError("--outcomes applies to drug tasks (--by drug)")
    return TaskSetSpec(kind, inputs, int(ways), int(shots), int(queries), int(seed), name, system, maps,
                       str(Path(outcomes).resolve()) if outcomes else None, label_policy, conditions, float(fraction),
                       None if threshold is None else float(threshold), None if test_tasks is None else int(test_tasks))
