"""The ingest summary: the JSON the CLI prints and the Markdown artifact people read.

The artifact shows counts and reason codes only: file names can carry PHI, so paths stay
in the JSON on the user's own terminal and in the home, never in Prefect.
"""

from __future__ import annotations

from collections import Counter

from medmeta.ingest.outcome import INGESTED, QUARANTINED, UNCHANGED, FileOutcome


def summarize(outcomes: list[FileOutcome], manifest: dict) -> dict:
    status = Counter(o.status for o in outcomes)
    counts = manifest["counts"]
    summary = {
        "files_seen": len(outcomes),
        "files_ingested": status[INGESTED],
        "files_unchanged": status[UNCHANGED],
        "files_quarantined": status[QUARANTINED],
        "quarantined": [{"path": o.path, "reason": o.reason} for o in outcomes if o.status == QUARANTINED],
        "rows_quarantined": counts["record_quarantine"],  # in the snapshot, whichever run rejected them
        "patients": counts["patients"],
        "records": counts["conditions"] + counts["observations"] + counts["medication_exposures"],
        "images": counts["images"],
        "tables": {k: v for k, v in counts.items()},
        "resources_ignored": manifest.get("resources_ignored", {}),
        "resources_excluded": manifest.get("resources_excluded", {}),
        "resources_read": manifest.get("resources_read", {}),
        "snapshot": manifest["snapshot"],
    }
    assert summary["files_seen"] == sum(status[s] for s in (INGESTED, UNCHANGED, QUARANTINED))
    return summary


def summary_markdown(summary: dict) -> str:
    reasons = Counter(q["reason"].split(":", 1)[0] for q in summary["quarantined"])
    lines = [
        f"# Ingest: snapshot `{summary['snapshot']}`",
        "",
        "| files seen | ingested | unchanged | quarantined | rows quarantined |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary['files_seen']} | {summary['files_ingested']} | {summary['files_unchanged']} "
        f"| {summary['files_quarantined']} | {summary['rows_quarantined']} |",
        "",
        "| table | rows |",
        "|---|---:|",
        *[f"| {name} | {rows} |" for name, rows in summary["tables"].items()],
    ]
    if summary["resources_ignored"]:
        lines += ["", "| FHIR resources read past | count |", "|---|---:|",
                  *[f"| {kind} | {n} |" for kind, n in summary["resources_ignored"].items()]]
    if summary.get("resources_excluded"):
        lines += ["", "| facts left out by rule | count |", "|---|---:|",
                  *[f"| {rule} | {n} |" for rule, n in summary["resources_excluded"].items()]]
    if reasons:
        lines += ["", "| quarantine reason | files |", "|---|---:|",
                  *[f"| `{code}` | {n} |" for code, n in sorted(reasons.items())]]
    return "\n".join(lines) + "\n"
