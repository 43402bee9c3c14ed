"""Prefect tasks of the pipeline itself (and of the arrival fast path): record the run under the
home, report it.

``record_pipeline_run`` completes the summary with what only the end of the run knows (each stage's
duration, read from the Prefect API: the run's subflow runs; champion and challenger of each
model, read back from the registry), writes it to ``H/runs/KIND-STARTED.json`` (KIND: the summary's
``kind``, ``pipeline`` or ``arrival``) and returns it; ``report_pipeline`` turns that summary into
the run's summary artifact (``medmeta-KIND-summary``) and its log lines.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from medmeta.atomic import atomic_path
from medmeta.home import Home
from tasks.options import NO_RESULTS

def kind_of(summary: dict) -> str:
    """``pipeline`` (the full run) or ``arrival`` (the fast path): names the run file and the artifact."""
    return summary.get("kind", "pipeline")


def summary_key(summary: dict) -> str:
    return f"medmeta-{kind_of(summary)}-summary"


@task(name="record-pipeline-run", **NO_RESULTS)
def record_pipeline_run(home: Home, summary: dict) -> dict:
    """Write the run's summary, completed with ``registry``, ``stages`` and ``seconds``
    (medmeta.training.report), under ``H/runs``; returns the completed summary."""
    summary = {**summary, "registry": registry_aliases(home, summary)}
    summary.update(stage_durations())
    path = home.runs / f"{kind_of(summary)}-{summary['started']}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str))
    return summary


@task(name="report-pipeline", **NO_RESULTS)
def report_pipeline(summary: dict, home: Home | None = None) -> None:
    """The summary artifact (validation, models against the baselines, champion and challenger,
    stage durations, and with ``home`` each model's training curve inline) and the same answers
    as log lines of the pipeline run."""
    from medmeta.training.report import log_lines, pipeline_markdown

    logger = get_run_logger()
    for line in log_lines(summary):
        logger.info("%s", line)
    create_markdown_artifact(key=summary_key(summary), markdown=pipeline_markdown(summary, training_curves(home, summary)),
                             description=f"What this {kind_of(summary)} run did: validation, each model against the "
                                         "baselines (95% intervals), champion and challenger now, stage durations")


def registry_aliases(home: Home, summary: dict) -> dict[str, dict]:
    """``{name: {"champion": n|None, "challenger": n|None}}`` of each registry model the run published
    to (adapted models included), read back from the registry."""
    from medmeta.registry.store import read_aliases

    trained = summary.get("models", []) + [w for w in summary.get("warm_starts", []) if "published" in w]
    names = [m["published"]["name"] for m in trained if m.get("published", {}).get("name")]
    names += [a["ref"].rsplit("@", 1)[0] for a in summary.get("adapted", []) if a.get("ref")]
    names += [m["published"]["name"] for m in summary.get("compound_models", [])]
    out = {}
    for name in dict.fromkeys(names):
        aliases = read_aliases(home, name)
        out[name] = {"champion": aliases.get("champion"), "challenger": aliases.get("challenger")}
    return out


def stage_durations() -> dict:
    """``{"stages": [...], "seconds": total}`` of the flow run this task runs in: each subflow run
    (and theirs, one level down), oldest first, with its state and seconds from start to end (so
    far, for one still running); ``{"stages_error": why}`` when the Prefect API cannot say."""
    from prefect.runtime import flow_run

    try:
        return _stage_durations(flow_run.id)
    except Exception as error:  # the summary is still written; the durations say why they are missing
        get_run_logger().warning("stage durations not recorded: %s", type(error).__name__)
        return {"stages_error": f"the Prefect API did not answer ({type(error).__name__})"}


def _stage_durations(pipeline_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        flow_names = {}

        def name_of(flow_id) -> str:
            if flow_id not in flow_names:
                flow_names[flow_id] = client.read_flow(flow_id).name
            return flow_names[flow_id]

        def children(parent_id) -> list:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
                sort=FlowRunSort.START_TIME_ASC, limit=200)

        stages = []
        for run in children(pipeline_run_id):
            stages.append(_stage(run, name_of(run.flow_id), None, now))
            stages += [_stage(inner, name_of(inner.flow_id), run.name, now) for inner in children(run.id)]
        pipeline = client.read_flow_run(pipeline_run_id)
    started = pipeline.start_time or pipeline.expected_start_time
    return {"stages": stages, "seconds": None if started is None else round((now - started).total_seconds(), 1)}


def _stage(run, flow_name: str, within: str | None, now: datetime) -> dict:
    start, end = run.start_time, run.end_time
    seconds = None if start is None else round(((end or now) - start).total_seconds(), 1)
    return {"stage": flow_name, "run": run.name, "within": within,
            "state": run.state.type.value if run.state else None, "seconds": seconds}


def training_curves(home: Home | None, summary: dict) -> dict[str, str]:
    """``{title: Markdown image}``: the training curve of each model in the summary, inline."""
    from tasks.training import png_markdown

    if home is None:
        return {}
    curves = {}
    for m in summary.get("models", []) + [w for w in summary.get("warm_starts", []) if "model" in w]:
        path = home.training / m["model"] / "curve.png"
        if path.is_file():
            title = f"Training curve: {m['algorithm']} on {m['taskset']}"
            curves[title] = png_markdown(path, title)
    return curves
