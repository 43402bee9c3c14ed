"""The long-lived landing watcher (medmeta.landing.watcher) in process: real inotify, real files.
One arrival per batch however many files and notifications it makes, none while nothing arrives or
files are only read, the first look against the home's ledger, and the polling fallback."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from medmeta.landing.changes import LandingChanges, LandingLook
from medmeta.landing.watcher import LandingWatcher
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY

SETTLE_S = 0.5


class Arrivals:
    def __init__(self):
        self.seen: list[LandingChanges] = []
        self.event = threading.Event()

    def __call__(self, changes: LandingChanges) -> None:
        self.seen.append(changes)
        self.event.set()

    def wait(self, timeout_s: float = 20) -> LandingChanges:
        assert self.event.wait(timeout_s), "no arrival"
        self.event.clear()
        return self.seen[-1]


def _age(path: Path, seconds: float = 600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def _batch(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(name * 10)
    return folder


def _watcher(landing: Path, home: Path, arrivals: Arrivals, **options) -> LandingWatcher:
    return LandingWatcher(landing, home / "ledger.json", Pseudonymizer(TEST_KEY), arrivals, settle_s=SETTLE_S,
                          **options).start()


def _quiet_for(watcher: LandingWatcher, seconds: float) -> int:
    """Looks made while waiting ``seconds`` (enough for several settle periods)."""
    before = watcher.looks
    time.sleep(seconds)
    return watcher.looks - before


def test_a_batch_dropped_together_is_one_arrival_and_nothing_else_is_one(tmp_path):
    landing, home = tmp_path / "landing", tmp_path / "home"
    landing.mkdir()
    arrivals = Arrivals()
    watcher = _watcher(landing, home, arrivals)
    try:
        assert watcher.mode == "inotify"
        assert _quiet_for(watcher, 4 * SETTLE_S) == 1 and arrivals.seen == [], "the first look of an empty folder"
        staging = _batch(tmp_path / "staging" / "site_a", [f"patient_{i}.json" for i in range(30)])
        for i in range(5):  # the rest of the batch written over a second, as a slow copy does
            (staging / f"late_{i}.csv").write_text("x" * 1000)
            time.sleep(0.05)
        (staging.parent / "site_a").rename(landing / "site_a")
        for i in range(5):  # files still being written into the landing folder itself
            with open(landing / f"copying_{i}.dcm", "wb") as out:
                for _ in range(4):
                    out.write(b"\0" * 4096)
                    out.flush()
                    time.sleep(0.05)
        changes = arrivals.wait()
        assert (changes.new, changes.changed, changes.files) == (40, 0, 40)
        time.sleep(6 * SETTLE_S)
        assert len(arrivals.seen) == 1, [c.to_dict() for c in arrivals.seen]

        for path in landing.rglob("*"):  # ingest reading the files is no arrival
            if path.is_file():
                path.read_bytes()
        (landing / "copying_0.dcm").unlink()  # nor is a removal alone
        time.sleep(6 * SETTLE_S)
        assert len(arrivals.seen) == 1

        (landing / "site_a" / "patient_0.json").write_text("a new version")
        changes = arrivals.wait()
        assert (changes.new, changes.changed, changes.removed) == (0, 1, 0), "a file in a folder moved in, rewritten"
    finally:
        watcher.stop()


def test_the_first_look_compares_with_what_ingest_recorded(tmp_path):
    from medmeta.ingest.ledger import Ledger
    from medmeta.ingest.outcome import INGESTED, QUARANTINED, FileOutcome

    landing, home = tmp_path / "landing", tmp_path / "home"
    _batch(landing / "site_a", ["a.json", "b.json", "c.csv"])
    (landing / "d.json").write_text("{}")
    files = sorted(p for p in landing.rglob("*") if p.is_file())
    for path in files:
        _age(path)
    logical = {path: path.relative_to(landing).as_posix() for path in files}
    ingested = [p for p in files if p.name != "d.json"]  # d.json arrived after the last ingest
    home.mkdir()
    ledger = Ledger(home / "ledger.json", Pseudonymizer(TEST_KEY))
    outcomes = [FileOutcome(logical[p], INGESTED, f"{i:064x}") if p.name != "c.csv" else  # c.csv: quarantined
                FileOutcome(logical[p], QUARANTINED, f"{i:064x}", reason="unknown_site_layout: no site mapping")
                for i, p in enumerate(ingested)]
    ledger.record(landing.resolve(), outcomes, {logical[p]: (p.stat().st_size, p.stat().st_mtime_ns) for p in ingested})
    ledger.save()

    first = LandingLook.from_ledger(landing, home / "ledger.json", Pseudonymizer(TEST_KEY)).look(SETTLE_S)
    assert (first.files, first.new, first.changed, first.arrived) == (4, 1, 0, True)

    (landing / "d.json").unlink()  # everything ingested: serve starting on this home announces nothing
    arrivals = Arrivals()
    watcher = _watcher(landing, home, arrivals)
    try:
        assert _quiet_for(watcher, 4 * SETTLE_S) == 1 and arrivals.seen == []
    finally:
        watcher.stop()
    state = "".join(str(v) for v in watcher._look.known)  # tokens, never names
    assert "site_a" not in state and "a.json" not in state


def test_the_first_look_knows_an_archive_whose_entries_ingest_read(tmp_path):
    """A zip archive's entries are the ledger's entries, the archive itself is no outcome: ingest records
    its stat (``archive_stats``), so serve starting on a home that ingested a zip announces nothing; the
    same ledger without the archive's stat (as before) counts it as new, and a rewritten archive is changed."""
    import zipfile

    from medmeta.ingest.config import IngestConfig
    from medmeta.ingest.ledger import Ledger, archive_stats, item_stats
    from medmeta.ingest.outcome import INGESTED, QUARANTINED, FileOutcome
    from medmeta.landing.walk import discover

    landing = tmp_path / "landing"
    _batch(landing / "site_a", ["a.json"])
    with zipfile.ZipFile(landing / "site_a" / "export.zip", "w") as archive:
        archive.writestr("b.json", "{}")
        archive.writestr("deep/c.json", "{}")
    with zipfile.ZipFile(landing / "many.zip", "w") as archive:  # refused whole: more entries than allowed
        for n in range(4):
            archive.writestr(f"{n}.json", "{}")
    for path in landing.rglob("*.*"):
        _age(path)
    items = discover(landing.resolve(), IngestConfig(max_zip_entries=3))
    assert len(items) == 4 and len(archive_stats(items)) == 2
    looks = {}
    for with_archives in (True, False):
        home = tmp_path / f"home-{with_archives}"
        home.mkdir()
        ledger = Ledger(home / "ledger.json", Pseudonymizer(TEST_KEY))
        outcomes = [FileOutcome(item.logical_path, INGESTED, f"{i:064x}") if item.problem is None else
                    FileOutcome(item.logical_path, QUARANTINED, f"{i:064x}", reason=str(item.problem))
                    for i, item in enumerate(items)]
        ledger.record(landing.resolve(), outcomes, item_stats(items), None,
                      archive_stats(items) if with_archives else None)
        ledger.save()
        looks[with_archives] = LandingLook.from_ledger(landing, home / "ledger.json", Pseudonymizer(TEST_KEY))
        first = looks[with_archives].look(SETTLE_S)
        assert (first.files, first.new) == ((3, 0) if with_archives else (3, 2))
    with zipfile.ZipFile(landing / "site_a" / "export.zip", "a") as archive:
        archive.writestr("d.json", "{}")
    _age(landing / "site_a" / "export.zip", 60)
    again = looks[True].look(SETTLE_S)
    assert (again.new, again.changed) == (0, 1)


def test_polling_is_the_fallback_and_finds_the_same_arrival(tmp_path):
    landing, home = tmp_path / "landing", tmp_path / "home"
    landing.mkdir()
    arrivals = Arrivals()
    watcher = _watcher(landing, home, arrivals, polling=True, poll_every_s=0.3)
    try:
        assert watcher.mode == "polling"
        shutil.copytree(_batch(tmp_path / "staging", ["a.json", "b.json"]), landing / "in")
        assert arrivals.wait().new == 2
        time.sleep(6 * SETTLE_S)
        assert len(arrivals.seen) == 1
    finally:
        watcher.stop()


def test_out_of_inotify_watches_falls_back_to_polling(tmp_path):
    """A real ENOSPC: a folder tree deeper than the machine's inotify watch limit allows."""
    limit = Path("/proc/sys/fs/inotify/max_user_watches")
    if not limit.exists() or int(limit.read_text()) > 20000:
        pytest.skip("the inotify watch limit is too high to exhaust in a test (max_user_watches > 20000)")
    landing = tmp_path / "landing"
    for i in range(int(limit.read_text()) + 10):
        (landing / f"d{i}").mkdir(parents=True)
    watcher = _watcher(landing, tmp_path / "home", Arrivals())
    try:
        assert watcher.mode == "polling"
    finally:
        watcher.stop()


def test_a_missing_landing_folder_is_said_by_its_token(tmp_path):
    from medmeta.errors import MedmetaError
    from medmeta.ingest.landings import landing_token

    folder = tmp_path / "Jane_Doe_export"
    with pytest.raises(MedmetaError, match=landing_token(folder, Pseudonymizer(TEST_KEY))) as raised:
        _watcher(folder, tmp_path / "home", Arrivals())
    assert "Jane" not in str(raised.value)
