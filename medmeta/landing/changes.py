"""What changed in a landing folder since it was last looked at: counts only, never names.

The landing watcher (``medmeta.landing.watcher``) holds a ``LandingLook`` and calls its ``look``
when the file system says something moved. A file's signature is its size and modification time
(cheap: nothing is read); a file modified in the last ``settle_s`` seconds is still being copied
and is counted as ``waiting`` until it settles. Files are keyed by a keyed token of their path,
since file names can carry PHI; the state lives in memory only.

The first look compares with what ingest recorded (``LandingLook.from_ledger``): a file the home's
ledger accounted for (ingested, unchanged or quarantined) with the same size and modification time
is not new, so ``medmeta serve`` started on a home that already ingested its landing folder
announces nothing (a zip archive too: ingest records its stat beside its entries). Files the ledger
holds no stat for (new ones, those ingested within the ledger's ``STAT_SETTLE_NS`` of being written,
quarantined files and archives of a ledger written before it kept their stat) are new to the first look.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from medmeta.landing.journal import is_cookie
from medmeta.pseudonyms import Pseudonymizer

Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class LandingChanges:
    files: int  # settled regular files in the landing folder now
    new: int
    changed: int
    removed: int
    waiting: int = 0  # files still being written: looked at again once they settle

    @property
    def arrived(self) -> bool:
        """New or changed files appeared (removals alone start nothing)."""
        return bool(self.new or self.changed)

    def to_dict(self) -> dict:
        return asdict(self)

    def payload(self) -> dict[str, int]:
        """What the ``medmeta.cases.arrived`` event carries: counts only."""
        return {"files": self.files, "new": self.new, "changed": self.changed, "removed": self.removed}


def listing(landing: Path) -> Iterator[tuple[str, int, int]]:
    """(logical path, size, mtime_ns) of every regular file under ``landing`` (symlinks not
    followed); the logical path is POSIX and relative to ``landing``, as ingest's discovery names it. A
    change journal's sync cookie (``medmeta.landing.journal``) is no file of the landing."""
    top = str(landing)
    for folder, _, names in os.walk(landing):
        prefix = "" if folder == top else os.path.relpath(folder, top).replace(os.sep, "/") + "/"
        for name in names:
            if not prefix and is_cookie(name):
                continue
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue  # removed while we looked
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            yield prefix + name, info.st_size, info.st_mtime_ns


def landing_token(landing: Path, pseudonymizer: Pseudonymizer) -> str:
    """The keyed token naming a landing folder (in the ledger, in Prefect and in events)."""
    return pseudonymizer.path_token(str(Path(landing).resolve()))


def require_folder(landing: Path, pseudonymizer: Pseudonymizer) -> None:
    """A ``MedmetaError`` naming the folder by its token when it is not a folder."""
    if not Path(landing).is_dir():
        from medmeta.errors import MedmetaError

        raise MedmetaError(f"the landing folder {landing_token(landing, pseudonymizer)} does not exist")


class LandingLook:
    """The watcher's memory of a landing folder: {path token: signature} of the files it knows."""

    def __init__(self, landing: Path, pseudonymizer: Pseudonymizer, known: dict[str, Signature] | None = None):
        self.landing = Path(landing)
        self.pseudonymizer = pseudonymizer
        self.known: dict[str, Signature] = dict(known or {})
        self._tokens: dict[str, str] = {}

    @classmethod
    def from_ledger(cls, landing: Path, ledger_file: Path, pseudonymizer: Pseudonymizer) -> "LandingLook":
        """Knowing what ingest recorded for ``landing``: the files ``Ledger.settled_matcher`` takes as
        unchanged (same size and mtime as when they were ingested). Nothing is read but the ledger."""
        from medmeta.ingest.ledger import Ledger

        require_folder(landing, pseudonymizer)
        look = cls(landing, pseudonymizer)
        source = Path(landing).resolve()
        seen: Callable[[str, int, int], bool] = Ledger.load(ledger_file, pseudonymizer).seen_matcher(source)
        for logical, size, mtime_ns in listing(source):
            if seen(logical, size, mtime_ns):
                look.known[look._token(logical)] = (size, mtime_ns)
        return look

    def look(self, settle_s: float = 2.0) -> LandingChanges:
        """Compare the folder with what this look knows, remember what is settled there now."""
        require_folder(self.landing, self.pseudonymizer)
        settled_before = time.time_ns() - int(settle_s * 1e9)
        now: dict[str, Signature] = {}
        waiting = 0
        for logical, size, mtime_ns in listing(self.landing):
            token = self._token(logical)
            if mtime_ns < settled_before:
                now[token] = (size, mtime_ns)
            else:
                waiting += 1
                if token in self.known:  # still being rewritten: keep what we knew until it settles
                    now[token] = self.known[token]
        changes = LandingChanges(
            files=len(now),
            new=sum(1 for k in now if k not in self.known),
            changed=sum(1 for k, sig in now.items() if k in self.known and self.known[k] != sig),
            removed=sum(1 for k in self.known if k not in now),
            waiting=waiting,
        )
        self.known = now
        return changes

    def _token(self, logical: str) -> str:
        token = self._tokens.get(logical)
        if token is None:
            token = self._tokens[logical] = self.pseudonymizer.path_token(logical)
        return token
