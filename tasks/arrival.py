"""Prefect tasks of the arrival flow (flows/arrival.py): coarse, one per step of an arrival.

Read a task set's manifest before its rebuild, compare after it (``medmeta.training.arrivals``),
adapt the champion to the new classes and publish them, warm-start the champion. The run's summary
is recorded and reported as the pipeline's is (tasks/pipeline.py). Evaluating and publishing the warm-started model are tasks/training.py's.
"""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from medmeta.home import Home
from medmeta.training.settings import PipelineSettings
from tasks.options import NO_RESULTS
from tasks.training import _LiveProgress, artifact_key


def taskset_name(entry: dict) -> str:
    """The name of the task set a pipeline settings' ``tasksets`` entry builds."""
    from medmeta.tasksets.spec import TASKSET_OPTIONS, make_spec

    return make_spec(entry["by"], entry.get("inputs"), entry.get("ways"), entry.get("shots"), entry.get("queries"),
                     int(entry.get("seed", 0)), entry.get("name"),
                     **{k: entry[k] for k in TASKSET_OPTIONS if k in entry}).name


@task(name="read-manifest-before", **NO_RESULTS)
def manifest_before(home: Home, taskset: str) -> dict | None:
    """The task set's manifest as built before this arrival (None when never built)."""
    from medmeta.tasksets.store import read_manifest, taskset_dir

    if not (taskset_dir(home, taskset) / "manifest.json").is_file():
        return None
    return read_manifest(home, taskset)


@task(name="compare-arrival", **NO_RESULTS)
def compare_arrival(home: Home, before: dict | None, taskset: str) -> dict:
    """``ArrivalChanges.to_dict()`` of the rebuilt task set against ``before``."""
    from medmeta.tasksets.store import read_manifest
    from medmeta.training.arrivals import arrival_changes

    changes = arrival_changes(home, before, read_manifest(home, taskset)).to_dict()
    get_run_logger().info("%s: champion %s; %d class(es) it never meta-trained on in the adaptation split, "
                          "%d known class(es) with new cases", taskset, changes["champion"] or "none",
                          len(changes["new_classes"]), len(changes["grown_classes"]))
    return changes


@task(name="adapt-new-classes", **NO_RESULTS)
def adapt_new_classes(home: Home, taskset: str, classes: list[str]) -> list[dict]:
    """Adapt the champion to ``classes`` and publish each at once (``adapt_taskset(targets=..., parent_build="compatible")``: a champion of an earlier build with the same inputs)."""
    from medmeta.training.adapt import adapt_taskset

    adapted = adapt_taskset(home, taskset, targets=list(classes), parent_build="compatible")
    logger = get_run_logger()
    for a in adapted:
        if "skipped" in a:
            logger.info("%s: not adapted (%s)", a.get("target", taskset), a["skipped"])
        else:
            logger.info("%s: %s %s (%s), metrics %s", a["target"], a["ref"],
                        "already published" if a["cached"] else "published", a["decision"], a["metrics"])
    return adapted


@task(name="warm-start", retries=1, **NO_RESULTS)
def warm_start_task(home: Home, taskset: str, settings: PipelineSettings) -> dict:
    """Warm-start the champion for ``arrival.warm_steps`` (medmeta.training.warm); a retry resumes
    from the run's checkpoint. Returns result.json without its history, or ``{"skipped": why}``."""
    from medmeta.training.warm import warm_train

    live = _LiveProgress(artifact_key("medmeta-warm-start-progress", taskset), f"warm start on {taskset}")
    result = warm_train(home, taskset, settings, on_step=live.on_step, on_validation=live.on_validation)
    logger = get_run_logger()
    if "skipped" in result:
        logger.info("%s: no warm start (%s)", taskset, result["skipped"])
        return result
    logger.info("%s %s: warm-started from %s, %d steps (%s) in %.1f s", "found" if result["cached"] else "trained",
                result["model"], result["warm_start"]["parent"], result["steps"], result["stop_reason"],
                result["seconds"])
    return {k: v for k, v in result.items() if k not in ("history", "validations")}
