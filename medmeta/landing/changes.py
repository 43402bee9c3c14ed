"""What changed in a landing folder since it was last looked at: counts only, never names.

The watcher deployment calls ``look`` on a short interval. A file's signature is its size and
modification time (cheap: nothing is read); a file modified in the last ``settle_s`` seconds
is still being copied and waits for the next look. Files are keyed by a keyed token of their path,
since file names can carry PHI. The state lives in ``H/watch/<landing token>.json``. The first
look at a folder reports every file as new.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medmeta.atomic import atomic_path
from medmeta.home import Home
from medmeta.pseudonyms import Pseudonymizer


@dataclass(frozen=True)
class LandingChanges:
    files: int  # regular files in the landing folder now
    new: int
    changed: int
    removed: int

    @property
    def arrived(self) -> bool:
        """New or changed files appeared (removals alone start nothing)."""
        return bool(self.new or self.changed)

    def to_dict(self) -> dict:
        return asdict(self)


def signatures(landing: Path, pseudonymizer: Pseudonymizer) -> dict[str, list[int]]:
    """{path token: [size, mtime_ns]} of every regular file under ``landing`` (symlinks not followed)."""
    out: dict[str, list[int]] = {}
    for folder, _, names in os.walk(landing):
        for name in names:
            path = Path(folder) / name
            try:
                info = path.lstat()
            except OSError:
                continue  # removed while we looked
            if path.is_symlink() or not path.is_file():
                continue
            out[pseudonymizer.path_token(str(path.relative_to(landing)))] = [info.st_size, info.st_mtime_ns]
    return out


def landing_token(landing: Path, pseudonymizer: Pseudonymizer) -> str:
    """The keyed token naming a landing folder (in the watch state and in events)."""
    return pseudonymizer.path_token(str(Path(landing).resolve()))


def look(landing: Path, home: Home, pseudonymizer: Pseudonymizer, settle_s: float = 2.0) -> LandingChanges:
    """Compare ``landing`` with the last look, remember what is there now, return the counts."""
    landing = Path(landing)
    if not landing.is_dir():
        from medmeta.errors import MedmetaError

        raise MedmetaError(f"{landing}: the landing folder does not exist")
    state_file = home.root / "watch" / f"{landing_token(landing, pseudonymizer)}.json"
    before = json.loads(state_file.read_text()) if state_file.exists() else {}
    settled = time.time_ns() - int(settle_s * 1e9)
    now: dict[str, list[int]] = {}
    for token, signature in signatures(landing, pseudonymizer).items():
        if signature[1] < settled:
            now[token] = signature
        elif token in before:  # still being written: keep what we knew until it settles
            now[token] = before[token]
    changes = LandingChanges(
        files=len(now),
        new=sum(1 for k in now if k not in before),
        changed=sum(1 for k, sig in now.items() if k in before and before[k] != sig),
        removed=sum(1 for k in before if k not in now),
    )
    if now != before:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_file) as tmp:
            tmp.write_text(json.dumps(now, sort_keys=True))
    return changes
