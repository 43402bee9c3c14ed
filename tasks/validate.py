"""Prefect tasks of the validation flow: one coarse task to validate, one to report."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from medmeta.home import Home
from tasks.options import NO_RESULTS


@task(name="validate-snapshot", **NO_RESULTS)
def validate_current_snapshot(home: Home, rules: str | None) -> dict:
    from validation.snapshot import validate_snapshot

    result = validate_snapshot(home, rules)
    get_run_logger().info("snapshot %s: %s, %d rows quarantined", result["snapshot"],
                          "passed" if result["success"] else "FAILED", result["rows_quarantined"])
    return result


@task(name="report-validation", **NO_RESULTS)
def report_validation(result: dict) -> None:
    from validation.report import report_markdown, report_rows

    create_markdown_artifact(key="medmeta-validation-report", markdown=report_markdown(result),
                             description=f"Great Expectations validation of snapshot {result['snapshot']}")
    create_table_artifact(key="medmeta-validation-rules", table=report_rows(result),
                          description="Every expectation: severity, success and unexpected count")
