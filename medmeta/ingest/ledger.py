"""The ledger: for every input path ever seen, the content hash and outcome of its last run.

    {"version": 2, "sources": {"<SOURCE token>": {"<path token>": {"sha256": ..., "status": ..., "reason": ...}}}}

Paths are held as keyed tokens, never as names (file and folder names can carry PHI): a SOURCE by
its landing token (``medmeta.ingest.landings.landing_token``, the watcher's and Prefect's too), a
file by the ``Pseudonymizer.path_token`` of its logical path under SOURCE. A ledger of version 1
(names as keys) is tokenised when it is loaded and written as version 2 by the next ``save``, so
a rerun on an older home finds its files unchanged.

The store is built from the parts of the hashes the ledger holds as ingested or unchanged: a
file replaced by a new version supersedes the old one, and files from earlier runs or other
sources stay in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

from medmeta.atomic import write_json
from medmeta.ingest.landings import landing_token
from medmeta.ingest.outcome import INGESTED, UNCHANGED, FileOutcome
from medmeta.pseudonyms import Pseudonymizer

VERSION = 2


class Ledger:
    def __init__(self, path: Path, pseudonymizer: Pseudonymizer, sources: dict[str, dict[str, dict]] | None = None):
        self.path = path
        self.pseudonymizer = pseudonymizer
        self.sources = sources or {}

    @classmethod
    def load(cls, path: Path, pseudonymizer: Pseudonymizer) -> "Ledger":
        if not path.exists():
            return cls(path, pseudonymizer)
        doc = json.loads(path.read_text(encoding="utf-8"))
        sources = doc.get("sources", {})
        if doc.get("version", 1) < VERSION:
            sources = tokenised_v1(sources, pseudonymizer)
        return cls(path, pseudonymizer, sources)

    def record(self, source: Path, outcomes: list[FileOutcome]) -> None:
        """The outcomes of one run over ``source`` (the resolved SOURCE path; held by its token)."""
        entries = self.sources.setdefault(landing_token(source, self.pseudonymizer), {})
        for outcome in outcomes:
            entries[self.pseudonymizer.path_token(outcome.path)] = {
                "sha256": outcome.sha256, "status": outcome.status,
                **({"reason": outcome.reason} if outcome.reason else {})}

    def active_hashes(self) -> list[str]:
        return sorted({
            entry["sha256"]
            for entries in self.sources.values() for entry in entries.values()
            if entry["status"] in (INGESTED, UNCHANGED) and entry.get("sha256")
        })

    def save(self) -> None:
        write_json(self.path, {"version": VERSION, "sources": self.sources})


def tokenised_v1(sources: dict[str, dict[str, dict]], pseudonymizer: Pseudonymizer) -> dict[str, dict[str, dict]]:
    """A version 1 ledger's sources with every key tokenised: a SOURCE key is the resolved path
    ``record`` was given, so its token is the landing token of that folder."""
    return {pseudonymizer.path_token(source): {pseudonymizer.path_token(path): entry for path, entry in entries.items()}
            for source, entries in sources.items()}
