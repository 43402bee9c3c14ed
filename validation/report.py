"""The validation report people read: Markdown for the Prefect artifact, rows for its table.

A sample of unexpected values shows numbers, dates and nulls as they are and text as ``masked``
(keyed hash, length, character classes: validation/run.py), never the text itself: a text value
that fails its rule (a name typed into a code column) may be PHI.
"""

from __future__ import annotations


def report_markdown(result: dict) -> str:
    verdict = "passed" if result["success"] else "**FAILED** (critical)"
    lines = [
        f"# Validation of snapshot `{result['snapshot']}`: {verdict}",
        "",
        f"{result['rows_checked']} rows checked, {result['rows_quarantined']} quarantined, "
        f"{len(result['critical_failures'])} critical failures, {len(result['warnings'])} warnings.",
    ]
    require = result.get("require")
    if require:
        lines += ["", f"Required: {', '.join(require['tables']) or 'no table'}"
                  + (f"; at least one of {', '.join(require['any_of'])}" if require["any_of"] else "") + "."]
    if result.get("empty_tables"):
        lines += ["", f"Empty tables: {', '.join(result['empty_tables'])}."]
    for table in sorted({r["table"] for r in result["rules"]}):
        lines += ["", f"## {table}", "", "| rule | expectation | severity | unexpected | sample |", "|---|---|---|---:|---|"]
        for r in (r for r in result["rules"] if r["table"] == table):
            mark = "" if r["success"] else " ✗"
            sample = ", ".join(f"`{s}`" for s in r.get("sample", [])[:3])
            lines.append(f"| {r['rule']}{mark} | {r['expectation']} | {r['severity']} | {r['unexpected_count']} | {sample} |")
    return "\n".join(lines) + "\n"


def report_rows(result: dict) -> list[dict]:
    return [{"table": r["table"], "rule": r["rule"], "expectation": r["expectation"], "severity": r["severity"],
             "success": r["success"], "unexpected": r["unexpected_count"]} for r in result["rules"]]


def digest(result: dict) -> dict:
    """The short form of a result: what the ingest summary carries and the one-line verdict reads."""
    return {
        "success": result["success"], "rows_checked": result["rows_checked"],
        "rows_quarantined": result["rows_quarantined"],
        "empty_tables": result.get("empty_tables", []),
        "critical_failures": [f"{f['table']}.{f['rule']}" for f in result["critical_failures"]],
        "warnings": [f"{w['table']}.{w['rule']}" for w in result["warnings"]],
    }


def summary_line(short: dict) -> str:
    if short["success"]:
        return (f"validation passed: {short['rows_checked']} rows checked, {short['rows_quarantined']} rows "
                f"quarantined by {len(short['warnings'])} warning expectations")
    return f"validation FAILED: critical {', '.join(short['critical_failures'])}; training will refuse this snapshot"
