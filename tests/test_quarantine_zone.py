"""The quarantine folder: the home's one PHI zone, private whatever the umask, and where a file
swapped after discovery ends up (quickly, with its reason, never read)."""

from __future__ import annotations

import json
import os
import stat
from datetime import date
from pathlib import Path

import pytest

from medmeta.errors import SYMLINK_OUTSIDE_SOURCE, UNREADABLE
from medmeta.home import Home
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.outcome import QUARANTINED
from medmeta.ingest.process import Worker, WorkerContext, quarantine_copy_name
from medmeta.landing.walk import discover


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    before = os.umask(0)
    yield
    os.umask(before)


def test_the_quarantine_folder_is_0700_whatever_the_umask(tmp_path, open_umask):
    home = Home(tmp_path / "h").ensure()
    assert _mode(home.quarantine) == 0o700
    assert _mode(home.store) == 0o777  # the umask still rules elsewhere: only the PHI zone is forced
    assert _mode(home.quarantine_folder("abc")) == 0o700


def test_a_quarantine_folder_made_wider_before_is_narrowed(tmp_path):
    home = Home(tmp_path / "h")
    (home.quarantine / "old").mkdir(parents=True)
    os.chmod(home.quarantine, 0o755)
    home.ensure()
    assert _mode(home.quarantine) == 0o700


def test_a_umask_that_would_lock_the_owner_out_does_not(tmp_path):
    before = os.umask(0o277)
    try:
        home = Home(tmp_path / "h").ensure()
        folder = home.quarantine_folder("abc")
    finally:
        os.umask(before)
    assert _mode(home.quarantine) == 0o700 and _mode(folder) == 0o700


def _worker(home: Path) -> Worker:
    return Worker(WorkerContext(home=home, config=IngestConfig(), key=b"k" * 32, mappings=(), today=date(2026, 1, 1)))


@pytest.mark.timeout(20)
def test_a_file_swapped_for_a_fifo_is_quarantined_at_once(tmp_path, open_umask):
    source = tmp_path / "landing"
    source.mkdir()
    (source / "a.csv").write_text("a,b\n1,2\n")
    (item,) = discover(source, IngestConfig())
    (source / "a.csv").unlink()
    os.mkfifo(source / "a.csv")
    home = Home(tmp_path / "h").ensure()
    outcome, _ = _worker(home.root).process(item)
    assert outcome.status == QUARANTINED and outcome.reason.startswith(UNREADABLE)
    (reason_file,) = home.quarantine.glob("*/reason.json")
    assert json.loads(reason_file.read_text())["copied"] is False
    assert _mode(reason_file.parent) == 0o700 and _mode(reason_file) == 0o600


def test_a_file_swapped_for_a_symlink_out_of_the_source_is_quarantined_unread(tmp_path):
    source = tmp_path / "landing"
    source.mkdir()
    (source / "a.csv").write_text("a,b\n1,2\n")
    secret = tmp_path / "elsewhere.csv"
    secret.write_text("mrn,name\n1,SECRET\n")
    (item,) = discover(source, IngestConfig())
    (source / "a.csv").unlink()
    (source / "a.csv").symlink_to(secret)
    home = Home(tmp_path / "h").ensure()
    outcome, _ = _worker(home.root).process(item)
    assert outcome.status == QUARANTINED and outcome.reason.startswith(SYMLINK_OUTSIDE_SOURCE)
    assert not any(b"SECRET" in p.read_bytes() for p in home.root.rglob("*") if p.is_file())


def test_a_copy_is_named_printably_within_the_name_limit():
    assert quarantine_copy_name("site/a.csv") == "a.csv"
    assert quarantine_copy_name(os.fsdecode(b"d/\x1b[2Jx\xff.csv")) == "\\x1b[2Jx\\xff.csv"
    long = quarantine_copy_name(os.fsdecode(b"\xff" * 250 + b".ndjson"))
    assert long.endswith(".ndjson") and len(long.encode()) <= 200
    assert quarantine_copy_name("z.zip/a/b.csv#3") == "b.csv#3"
