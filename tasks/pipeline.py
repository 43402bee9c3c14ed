"""Prefect tasks of the pipeline itself: record the run under the home, report it."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_markdown_artifact

from medmeta.atomic import atomic_path
from medmeta.home import Home
from tasks.options import NO_RESULTS


@task(name="record-pipeline-run", **NO_RESULTS)
def record_pipeline_run(home: Home, summary: dict) -> None:
    path = home.runs / f"pipeline-{summary['started']}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str))


@task(name="report-pipeline", **NO_RESULTS)
def report_pipeline(summary: dict) -> None:
    from medmeta.training.report import pipeline_markdown

    create_markdown_artifact(key="medmeta-pipeline-summary", markdown=pipeline_markdown(summary),
                             description="What this pipeline run did: data, validation, models and versions")
