"""Faults are one line: a read-only home, a full disk, a second ingest on the same home and a cohort
too small for the settings each end the real command line (a subprocess) with exit 2 and one line
on stderr naming the cause and the fix; no traceback; the store unchanged; and the run after the
fault leaves the same store, pixel cache and quarantine as a run that met no fault.

As root, permissions stop no write: the read-only home and the full disk are a small tmpfs
(remounted read-only, or filled); where mounting is not allowed the full disk is a file-size limit
(``ulimit -f``: EFBIG) and the read-only home is ``chmod 0555``, skipped only as root without mount.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_ingest_kill import ROOT, _cli_env, _state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _medmeta(*args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], env=_cli_env(), capture_output=True, text=True,
                          timeout=600, cwd=ROOT, preexec_fn=preexec if limit_file_size else None)


def _one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0]
    return lines[0]


def _store_hash(home: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((home / "store").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(home)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _can_mount(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(folder)], check=True)
    return True


@contextmanager
def _tmpfs(folder: Path, size_mb: int):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def landings(tmp_path_factory) -> tuple[Path, Path]:
    """Two small cohorts: the home holds the first; the faulted run ingests the second."""
    from medmeta.synth.generate import generate_cohort

    base = tmp_path_factory.mktemp("fault-landings")
    generate_cohort(base / "first", patients=12, seed=1, faults=False)
    generate_cohort(base / "second", patients=12, seed=2, faults=False)
    return base / "first", base / "second"


@pytest.fixture(scope="module")
def reference(landings, tmp_path_factory) -> dict:
    """The store, cache and quarantine of a home that ingested both cohorts with no fault."""
    home = tmp_path_factory.mktemp("fault-reference") / "home"
    for landing in landings:
        assert _medmeta("ingest", str(landing), "--home", str(home)).returncode == 0
    return _state(home)


def _home_with_first(landings, home: Path) -> str:
    result = _medmeta("ingest", str(landings[0]), "--home", str(home))
    assert result.returncode == 0, result.stderr[-3000:]
    return _store_hash(home)


def test_a_full_disk_is_one_line_and_the_rerun_equals_a_clean_run(landings, reference, tmp_path):
    disk = tmp_path / "disk"
    if _can_mount(disk):
        with _tmpfs(disk, 40):
            home = disk / "home"
            before = _home_with_first(landings, home)
            free = shutil.disk_usage(disk).free
            (disk / "filler").write_bytes(b"\0" * max(free - 16 * 1024, 0))  # what is left: one page or so
            line = _one_line(_medmeta("ingest", str(landings[1]), "--home", str(home)), "disk is full", str(home))
            assert _store_hash(home) == before
            (disk / "filler").unlink()
            assert _medmeta("ingest", str(landings[1]), "--home", str(home)).returncode == 0
            assert _state(home) == reference, line
        return
    home = tmp_path / "home"  # no mount: a file-size limit makes every larger write fail (EFBIG)
    before = _home_with_first(landings, home)
    _one_line(_medmeta("ingest", str(landings[1]), "--home", str(home), limit_file_size=4096), "disk is full")
    assert _store_hash(home) == before
    assert _medmeta("ingest", str(landings[1]), "--home", str(home)).returncode == 0
    assert _state(home) == reference


def test_a_read_only_home_is_one_line_and_the_store_is_unchanged(landings, reference, tmp_path):
    disk = tmp_path / "disk"
    if _can_mount(disk):
        with _tmpfs(disk, 40):
            home = disk / "home"
            before = _home_with_first(landings, home)
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            for command in (["ingest", str(landings[1])], ["run", str(landings[1])]):
                _one_line(_medmeta(*command, "--home", str(home)), "read-only", str(home), "make it writable")
            assert _store_hash(home) == before
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert _medmeta("ingest", str(landings[1]), "--home", str(home)).returncode == 0
            assert _state(home) == reference
        return
    if os.geteuid() == 0:
        pytest.skip("running as root, where chmod stops no write, and mount is not allowed here")
    home = tmp_path / "home"
    before = _home_with_first(landings, home)
    folders = [home, *[p for p in home.rglob("*") if p.is_dir()]]
    for folder in folders:
        folder.chmod(0o555)
    try:
        _one_line(_medmeta("ingest", str(landings[1]), "--home", str(home)), "read-only", "make it writable")
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert _store_hash(home) == before


def test_a_second_ingest_on_the_same_home_is_refused_in_one_line(landings, tmp_path):
    home = tmp_path / "home"
    before = _home_with_first(landings, home)
    fd = os.open(home / ".ingest.lock", os.O_RDWR)  # the lock an ingest in progress holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _one_line(_medmeta("ingest", str(landings[1]), "--home", str(home)), "another ingest is running", str(home))
    finally:
        os.close(fd)
    assert _store_hash(home) == before


def test_a_cohort_too_small_for_the_task_set_says_which_setting_in_one_line(landings, tmp_path):
    home = tmp_path / "home"
    before = _home_with_first(landings, home)
    line = _one_line(_medmeta("run", str(landings[0]), "--home", str(home)), "enough cases", "tasksets:",
                     "--config")
    assert "shots" in line and "queries" in line
    assert _store_hash(home) == before
