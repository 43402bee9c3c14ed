"""The ingest summary: the JSON the CLI prints and the Markdown artifact people read.

A file is named by the keyed token of its path (``Pseudonymizer.path_token``, as in the ledger),
never by its name: file names can carry PHI, and the summary goes to ``H/runs/`` and to the flow's
caller. The names of the quarantined files stay in this process's memory (``quarantined_names``),
for the operator's terminal only; the artifact shows counts and reason codes.
"""

from __future__ import annotations

from collections import Counter

from medmeta.ingest.outcome import INGESTED, QUARANTINED, UNCHANGED, FileOutcome
from medmeta.pseudonyms import Pseudonymizer

_names_seen: dict[str, str] = {}  # path token -> name, of the files this process quarantined


def summarize(outcomes: list[FileOutcome], manifest: dict, pseudonymizer: Pseudonymizer, unchanged: int = 0) -> dict:
    """Counts of the run and the new snapshot; each quarantined file as its path token and reason.

    ``outcomes``: the files this run read (and any others it has an outcome for); ``unchanged``: how
    many more it found unchanged by their size and mtime without reading them (discovery counts them,
    no outcome each). Every file seen is in ``files_seen``, as exactly one of the three counts."""
    status = Counter(o.status for o in outcomes)
    quarantined = []
    for outcome in outcomes:
        if outcome.status == QUARANTINED:
            token = pseudonymizer.path_token(outcome.path)
            _names_seen[token] = outcome.path
            quarantined.append({"token": token, "reason": outcome.reason})
    counts = manifest["counts"]
    summary = {
        "files_seen": len(outcomes) + unchanged,
        "files_ingested": status[INGESTED],
        "files_unchanged": status[UNCHANGED] + unchanged,
        "files_quarantined": status[QUARANTINED],
        "quarantined": quarantined,
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
    assert summary["files_seen"] == sum(summary[f"files_{s}"] for s in (INGESTED, UNCHANGED, QUARANTINED))
    return summary


def quarantined_names(summary: dict) -> list[dict]:
    """The summary's quarantined files with their names, as this process saw them: ``{"path",
    "token", "reason"}`` each (``path`` None for a file another process quarantined). For the
    terminal only, shown through ``medmeta.landing.names.display_name``; never to be written."""
    return [{"path": _names_seen.get(q["token"]), **q} for q in summary["quarantined"]]


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
