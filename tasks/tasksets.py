"""Prefect tasks of the task-set flow: one coarse task to build, one to report."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from medmeta.home import Home
from medmeta.tasksets.build import build_taskset
from medmeta.tasksets.spec import TaskSetSpec
from medmeta.tasksets.summary import summary_markdown
from tasks.options import NO_RESULTS


@task(name="build-taskset", **NO_RESULTS)
def build_taskset_task(home: Home, spec: TaskSetSpec) -> dict:
    manifest = build_taskset(home, spec)
    get_run_logger().info("task set %s from snapshot %s: %s", manifest["name"], manifest["snapshot"],
                          ", ".join(f"{s} {len(e['classes'])} classes / {e['cases']} cases"
                                    for s, e in manifest["splits"].items()))
    return manifest


@task(name="report-taskset", **NO_RESULTS)
def report_taskset(manifest: dict) -> None:
    create_markdown_artifact(key="medmeta-taskset", markdown=summary_markdown(manifest),
                             description=f"Task set {manifest['name']}: splits, counts and exclusions")
