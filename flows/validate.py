"""The validation flow: Great Expectations suites over the current snapshot, and its gate."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from tasks.validate import report_validation, validate_current_snapshot


@flow(name="validate", persist_result=False, flow_run_name=run_names.dated("validate"))
def validate_flow(home: str | None = None, rules: str | None = None) -> dict:
    """Validate the current snapshot; record pass/fail so later stages can refuse a failed one."""
    result = validate_current_snapshot(Home.at(home), rules)
    report_validation(result)
    return result
