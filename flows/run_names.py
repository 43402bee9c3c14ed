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
    """The ``flow_run_name`` of ``build-tasksets``: ``taskset_run_name`` of the run's parameters."""
    from prefect.runtime import flow_run

    return taskset_run_name(flow_run.parameters)


def taskset_run_name(parameters: dict) -> str:
    """``tasksets-NAME``: the task set's name, given or the one its spec makes
    (``tasksets-disease-images-3w5s3q-seed0``); ``tasksets-BY-invalid`` for parameters the flow refuses."""
    from medmeta.errors import MedmetaError
    from medmeta.tasksets.spec import make_spec

    p = parameters
    try:
        name = make_spec(p.get("by"), p.get("inputs"), p.get("ways"), p.get("shots"), p.get("queries"),
                         int(p.get("seed") or 0), p.get("name"), threshold=p.get("threshold"),
                         test_tasks=p.get("test_tasks")).name
    except (MedmetaError, TypeError, ValueError):  # the flow itself says what is wrong
        name = f"{p.get('by')}-invalid"
    return f"tasksets-{name}"


def adapt_run_name() -> str:
    """``adapt-TASKSET``, or ``adapt-all`` for every task set."""
    from prefect.runtime import flow_run

    return f"adapt-{flow_run.parameters.get('taskset') or 'all'}"
