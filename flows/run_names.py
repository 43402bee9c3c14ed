"""Flow run names that say what a run does, for the Prefect UI's run list (``flow_run_name``).

Parameters that name things the operator chose (an algorithm, a task set, a model) are formatted
into the name; runs over data are named by when they started (UTC, to the minute), never by a
landing folder or file: names carry no PHI (flows/landing_flow.py: Prefect holds only the
landing's token).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

TRAIN = "train-{algorithm}-{taskset}"
EVALUATE = "evaluate-{model}"
PUBLISH = "publish-{model}"


def utc_minute() -> str:
    """``2026-12-04T07-45``: now in UTC, to the minute (dashes: a name, not a timestamp to parse)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M")


def dated(prefix: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``PREFIX-2026-12-04T07-45``."""

    def run_name() -> str:
        return f"{prefix}-{utc_minute()}"

    run_name.__name__ = f"{prefix.replace('-', '_')}_run_name"
    return run_name


def tasksets_run_name() -> str:
    """``tasksets-NAME``, or ``tasksets-BY[-INPUTS]`` when the task set is named by its spec."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    if parameters.get("name"):
        return f"tasksets-{parameters['name']}"
    return "-".join(["tasksets", str(parameters.get("by")), *([str(parameters["inputs"])] if parameters.get("inputs") else [])])


def adapt_run_name() -> str:
    """``adapt-TASKSET``, or ``adapt-all`` for every task set."""
    from prefect.runtime import flow_run

    return f"adapt-{flow_run.parameters.get('taskset') or 'all'}"
