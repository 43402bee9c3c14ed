"""The landing folder's change journal (medmeta/landing/journal.py): a rerun takes a folder the ledger
signed and inotify saw untouched since as settled without a ``stat`` of its files; any change in it, a
folder replaced under the same name (or one above it), a lost event, a stopped keeper or another size
limit sends it back to the full look. Real inotify (the keeper's thread reading the kernel's events),
the real ledger and discovery; the last test runs the real ingest flow beside a keeper process."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medmeta.ingest.config import IngestConfig
from medmeta.ingest.ledger import _LOADED, Ledger, item_stats
from medmeta.ingest.outcome import INGESTED, UNCHANGED, FileOutcome
from medmeta.landing.changes import listing
from medmeta.landing.journal import (COOKIE_PREFIX, IN_Q_OVERFLOW, ChangeJournal, file_system_type, journal_file,
                                     sync)
from medmeta.landing.walk import discover
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"Quenneville_Orsolya": 5, "Marrowgate_Ysolde": 4, "Marrowgate_Ysolde/Thistlewood_Ines": 3}  # PHI markers
TOTAL = sum(FOLDERS.values()) + 1


def _old(path: Path) -> None:
    old = time.time() - 60  # settled (a fresh stat is not trusted: ledger.py)
    os.utime(path, (old, old))


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    for folder, count in FOLDERS.items():
        (landing / folder).mkdir(parents=True)
        for n in range(count):
            path = landing / folder / f"Fairweather_{n}.dcm"
            path.write_bytes(f"{folder}-{n}".encode())
            _old(path)
    top = landing / "Dunsinane_top.dcm"
    top.write_bytes(b"top")
    _old(top)
    return landing


class Keeper:
    """A started ``ChangeJournal`` of ``landing`` whose file lies in ``watch/``."""

    def __init__(self, landing: Path, watch: Path):
        self.file = journal_file(watch, "landing")
        self.journal = ChangeJournal(landing, self.file, Pseudonymizer(TEST_KEY), "landing").start()

    def stop(self) -> None:
        self.journal.stop()


def _run(landing: Path, ledger_path: Path, journal: Path | None, max_file_bytes: int | None = None) -> dict:
    """One ingest's ledger work, as tasks/ingest.py does it: the journal synchronised, discovery with the
    matcher, each item ingested (the content hash of its bytes), outcomes, signatures and the journal's
    position recorded and saved."""
    _LOADED.clear()
    config = IngestConfig() if max_file_bytes is None else IngestConfig(max_file_bytes=max_file_bytes)
    pseudo, source = Pseudonymizer(TEST_KEY), Path(os.path.realpath(landing))
    view = sync(landing, journal) if journal is not None else None
    ledger = Ledger.load(ledger_path, pseudo)
    settled: list = []
    matcher = ledger.settled_matcher(source, lambda sha256: True, watch=view, max_file_bytes=config.max_file_bytes)
    items = discover(landing, config, matcher, settled)
    outcomes = [FileOutcome(item.logical_path, INGESTED, hashlib.sha256(item.fs_path.read_bytes()).hexdigest())
                for item in items]
    outcomes += [FileOutcome(path, UNCHANGED, sha) for path, sha, _, _ in matcher.to_record]
    stats = item_stats(items)
    stats.update((path, (size, mtime)) for path, _, size, mtime in matcher.to_record)
    watch = [*view.position.to_list(), config.max_file_bytes] if view is not None else None
    ledger.record(source, outcomes, stats, matcher.signatures, watch=watch)
    ledger.save()
    return {"items": sorted(item.logical_path for item in items), "unchanged": len(settled) + matcher.settled_in_folders,
            "by_journal": matcher.folders_by_journal, "synced": view is not None}


def _settle(landing: Path, ledger_path: Path, journal: Path) -> None:
    """Runs until every folder is signed with the journal's position: the next run needs no stat."""
    for _ in range(3):
        _run(landing, ledger_path, journal)


def test_an_untouched_signed_folder_is_settled_from_the_journal_and_a_touched_one_is_looked_at(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        first = _run(landing, ledger_path, keeper.file)
        assert first["synced"] and len(first["items"]) == TOTAL and first["by_journal"] == 0
        _settle(landing, ledger_path, keeper.file)
        clean = _run(landing, ledger_path, keeper.file)
        assert clean == {"items": [], "unchanged": TOTAL, "by_journal": 4, "synced": True}  # 3 folders and the top
        # a file rewritten in place: its folder is read file by file, the file read again
        path = landing / "Quenneville_Orsolya" / "Fairweather_2.dcm"
        with open(path, "r+b") as handle:
            handle.write(b"Z")
        _old(path)  # and its mtime set back a minute: the listing's stat would have caught the write too
        after = _run(landing, ledger_path, keeper.file)
        assert after["items"] == ["Quenneville_Orsolya/Fairweather_2.dcm"]
        assert after["by_journal"] == 3 and after["unchanged"] == TOTAL - 1
        again = _run(landing, ledger_path, keeper.file)
        assert again["items"] == [] and again["by_journal"] == 3, "the rewritten folder was signed again"
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
        text = keeper.file.read_bytes() + ledger_path.read_bytes()
        assert b"Quenneville" not in text and b"Marrowgate" not in text and b"Thistlewood" not in text
    finally:
        keeper.stop()


def test_the_position_survives_a_ledger_saved_as_journal_lines(tmp_path, monkeypatch):
    """A large ledger appends each run's changes to ``ledger.json.journal``: the journal's position the run
    synchronised at (``watched``) travels in those lines too, and a new session's is saved by a rerun that
    changed nothing else."""
    import medmeta.ingest.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "JOURNAL_MIN_ENTRIES", 1)
    monkeypatch.setattr(ledger_module, "JOURNAL_SHARE", 1)
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    _run(landing, ledger_path, None)  # written whole: the lines that follow apply to it
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        _settle(landing, ledger_path, keeper.file)
        assert ledger_module.journal_path(ledger_path).exists()
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
    finally:
        keeper.stop()


def test_a_folder_replaced_under_its_name_is_read_again_with_the_folders_below_it(tmp_path):
    """No event happens inside a folder moved away and another moved in under its name: the journal
    marks the whole subtree of a folder that left or came, ``Thistlewood_Ines/`` below it too."""
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        _settle(landing, ledger_path, keeper.file)
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
        outside = tmp_path / "elsewhere"
        shutil.copytree(landing / "Marrowgate_Ysolde", outside / "replacement", copy_function=shutil.copy2)
        inner = outside / "replacement" / "Thistlewood_Ines" / "Fairweather_0.dcm"
        inner.write_bytes(b"other content, same size!"[:len(inner.read_bytes())])
        _old(inner)
        shutil.move(landing / "Marrowgate_Ysolde", outside / "gone")
        shutil.move(outside / "replacement", landing / "Marrowgate_Ysolde")
        after = _run(landing, ledger_path, keeper.file)
        assert "Marrowgate_Ysolde/Thistlewood_Ines/Fairweather_0.dcm" in after["items"]
        assert after["by_journal"] == 1, "only Quenneville_Orsolya/ was untouched (the top's listing changed)"
        # a folder later created inside the moved-in one is watched: a file written there is seen
        (landing / "Marrowgate_Ysolde" / "new").mkdir()
        _settle(landing, ledger_path, keeper.file)
        (landing / "Marrowgate_Ysolde" / "new" / "late.dcm").write_bytes(b"late")
        _old(landing / "Marrowgate_Ysolde" / "new" / "late.dcm")
        assert _run(landing, ledger_path, keeper.file)["items"] == ["Marrowgate_Ysolde/new/late.dcm"]
    finally:
        keeper.stop()


def test_a_lost_event_a_stopped_keeper_or_another_size_limit_means_a_full_look(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        _settle(landing, ledger_path, keeper.file)
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
        other_limit = _run(landing, ledger_path, keeper.file, max_file_bytes=10_000)
        assert other_limit["by_journal"] == 0 and other_limit["unchanged"] == TOTAL
        _settle(landing, ledger_path, keeper.file)
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
        session = keeper.journal.session
        keeper.journal.handle([(-1, IN_Q_OVERFLOW, "")])  # the kernel's queue overflowed: events were lost
        keeper.journal._write()
        assert keeper.journal.session != session
        lost = _run(landing, ledger_path, keeper.file)
        assert lost["synced"] and lost["by_journal"] == 0 and lost["unchanged"] == TOTAL
        _settle(landing, ledger_path, keeper.file)
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 4
    finally:
        keeper.stop()
    restarted = Keeper(landing, tmp_path / "watch")  # a new session: positions of the old one mean nothing
    try:
        assert _run(landing, ledger_path, restarted.file)["by_journal"] == 0
        _settle(landing, ledger_path, restarted.file)
        assert _run(landing, ledger_path, restarted.file)["by_journal"] == 4
    finally:
        restarted.stop()
    start = time.monotonic()
    stopped = _run(landing, ledger_path, restarted.file)
    assert not stopped["synced"] and stopped["by_journal"] == 0 and stopped["unchanged"] == TOTAL
    assert time.monotonic() - start < 1.0, "a stopped keeper is known from its journal: no wait for a cookie"


def test_a_session_that_marked_too_many_folders_starts_anew(tmp_path, monkeypatch):
    import medmeta.landing.journal as journal

    monkeypatch.setattr(journal, "MAX_DIRTY", 3)
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        _settle(landing, ledger_path, keeper.file)
        session = keeper.journal.session
        for n in range(3):
            (landing / f"arrived_{n}").mkdir()  # each marks its parent and itself
        view = sync(landing, keeper.file)
        assert view is not None and view.position.session != session and len(view.dirty) <= 3
        assert _run(landing, ledger_path, keeper.file)["by_journal"] == 0  # a position of the old session
    finally:
        keeper.stop()


def test_a_sync_cookie_is_no_input_and_no_arrival(tmp_path):
    """A cookie a killed run left behind is neither ingested nor quarantined nor announced."""
    landing = _landing(tmp_path)
    (landing / f"{COOKIE_PREFIX}0123456789abcdef").write_bytes(b"")
    (landing / "Quenneville_Orsolya" / f"{COOKIE_PREFIX}deep").write_bytes(b"")  # only the top's are cookies
    names = [item.logical_path for item in discover(landing, IngestConfig())]
    assert len(names) == TOTAL + 1 and f"Quenneville_Orsolya/{COOKIE_PREFIX}deep" in names
    assert not [name for name in names if name.startswith(COOKIE_PREFIX)]
    assert len(list(listing(landing))) == TOTAL + 1


def test_one_keeper_per_journal(tmp_path):
    landing = _landing(tmp_path)
    keeper = Keeper(landing, tmp_path / "watch")
    try:
        with pytest.raises(ValueError, match="another process keeps it already"):
            Keeper(landing, tmp_path / "watch")
    finally:
        keeper.stop()
    Keeper(landing, tmp_path / "watch").stop()  # free again once the first stopped


def test_a_landing_on_a_network_file_system_keeps_no_journal():
    mountinfo = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                 "40 22 0:40 / /mnt/pacs\\040share rw,relatime shared:9 - nfs4 server:/export rw\n")
    assert file_system_type(Path("/mnt/pacs share/landing"), mountinfo) == "nfs4"
    assert file_system_type(Path("/home/x"), mountinfo) == "ext4"
    assert file_system_type(Path("/mnt/pacs"), mountinfo) == "ext4"


def test_a_keeper_on_a_network_file_system_refuses(tmp_path, monkeypatch):
    import medmeta.landing.journal as journal

    monkeypatch.setattr(journal, "file_system_type", lambda path: "nfs4")
    with pytest.raises(ValueError, match="nfs4 file system"):
        ChangeJournal(tmp_path, journal_file(tmp_path / "watch", "x"), Pseudonymizer(TEST_KEY), "x").start()
    assert not journal_file(tmp_path / "watch", "x").exists()


def test_the_ingest_flow_beside_a_keeper_process_skips_untouched_folders_and_reads_a_rewritten_file(
        tmp_path, prefect_api, monkeypatch):
    from flows.ingest import ingest_flow
    from medmeta.synth.generate import generate_images

    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    landing, home = tmp_path / "landing", tmp_path / "home"
    generate_images(landing, count=12, size=32, seed=1)
    for path in landing.rglob("*"):
        if path.is_file():
            _old(path)
    first = ingest_flow(str(landing), str(home), run_validation=False)
    keeper = subprocess.Popen([sys.executable, "-m", "medmeta.cli", "journal", "--landing", str(landing),
                               "--home", str(home)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert "keeping the change journal" in keeper.stderr.readline()
        for _ in range(2):
            ingest_flow(str(landing), str(home), run_validation=False)
        clean = ingest_flow(str(landing), str(home), run_validation=False)
        assert clean["folders_by_journal"] >= 1 and clean["files_ingested"] == 0
        assert clean["files_unchanged"] == first["files_seen"] and clean["snapshot"] == first["snapshot"]
        [path] = sorted(p for p in landing.rglob("*.dcm"))[:1]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF  # a pixel's byte: a new image content, same size
        path.write_bytes(bytes(data))
        _old(path)
        after = ingest_flow(str(landing), str(home), run_validation=False)
        assert after["files_ingested"] == 1 and after["snapshot"] != first["snapshot"]
        assert not [p for p in landing.iterdir() if p.name.startswith(COOKIE_PREFIX)], "cookies are removed"
    finally:
        keeper.terminate()
        keeper.wait(30)
    assert keeper.returncode == 0


def test_medmeta_journal_refuses_a_missing_landing_folder_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "journal", "--landing", str(tmp_path / "nowhere"),
                             "--home", str(tmp_path / "home")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "MEDMETA_PSEUDONYM_KEY": TEST_KEY})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "the landing folder does not exist" in result.stderr
