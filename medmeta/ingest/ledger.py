"""The ledger: for every input path ever seen, the content hash and outcome of its last run.

    {"sources": {"<absolute SOURCE>": {"<path in SOURCE>": {"sha256": ..., "status": ...}}}}

The store is built from the parts of the hashes the ledger holds as ingested or unchanged: a
file replaced by a new version supersedes the old one, and files from earlier runs or other
sources stay in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

from medmeta.atomic import write_json
from medmeta.ingest.outcome import INGESTED, UNCHANGED, FileOutcome


class Ledger:
    def __init__(self, path: Path, sources: dict[str, dict[str, dict]] | None = None):
        self.path = path
        self.sources = sources or {}

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        if not path.exists():
            return cls(path)
        return cls(path, json.loads(path.read_text()).get("sources", {}))

    def record(self, source: str, outcomes: list[FileOutcome]) -> None:
        entries = self.sources.setdefault(source, {})
        for outcome in outcomes:
            entries[outcome.path] = {"sha256": outcome.sha256, "status": outcome.status,
                                     **({"reason": outcome.reason} if outcome.reason else {})}

    def active_hashes(self) -> list[str]:
        return sorted({
            entry["sha256"]
            for entries in self.sources.values() for entry in entries.values()
            if entry["status"] in (INGESTED, UNCHANGED) and entry.get("sha256")
        })

    def save(self) -> None:
        write_json(self.path, {"version": 1, "sources": self.sources})
