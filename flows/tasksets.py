"""The task-set flow: a validated snapshot to few-shot task sets split by disease or drug."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.tasksets.spec import make_spec
from medmeta.tasksets.store import taskset_dir
from medmeta.tasksets.summary import summarize
from tasks.tasksets import build_taskset_task, report_taskset



@flow(name="build-tasksets", persist_result=False, validate_parameters=True, flow_run_name=run_names.tasksets_run_name)
def build_tasksets_flow(by: str, inputs: str | None = None, ways: int | None = None, shots: int | None = None,
                        queries: int | None = None, seed: int = 0, name: str | None = None,
                        home: str | None = None, system: str = "auto", concept_maps: list[str] | None = None,
                        outcomes: str | None = None, label_policy: str = "auto", conditions: str = "disorders",
                        feature_min_patients_fraction: float = 0.2, threshold: float | None = None,
                        test_tasks: int | None = None) -> dict:
    """Build the task set (refusing a snapshot that failed validation) and report it; returns its summary.

    ``system``, ``concept_maps``, ``outcomes``, ``label_policy``, ``conditions`` and
    ``feature_min_patients_fraction`` are ``medmeta.tasksets.spec.make_spec``'s (the CLI's options and
    a pipeline settings' task set keys of the same names); ``threshold``: target tasks' fixed pActivity cut;
    ``test_tasks``: target tasks' protocol split (exactly that many meta-test tasks, no meta-validation)."""
    the_home = Home.at(home)
    spec = make_spec(by, inputs, ways, shots, queries, seed, name, system, concept_maps or (), outcomes, label_policy,
                     conditions, feature_min_patients_fraction, threshold, test_tasks)
    manifest = build_taskset_task(the_home, spec)
    report_taskset(manifest)
    return summarize(manifest, str(taskset_dir(the_home, spec.name)))
