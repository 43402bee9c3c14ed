"""``kill -9`` in the middle of an ingest, then a rerun, leaves exactly the canonical store,
pixel cache and quarantine that an uninterrupted run leaves. (The staging area, store/parts,
follows the batches each run happened to make; nothing reads it but consolidation.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.test_ingest_flow import tree_files

ROOT = Path(__file__).resolve().parents[1]


def _cli_env() -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_API_URL": PREFECT_API_URL.value()}


def _command(landing: Path, home: Path) -> list[str]:
    config = home.parent / "small-batches.yaml"
    config.write_text("batch_size: 32\n")
    return [sys.executable, "-m", "medmeta.cli", "ingest", str(landing), "--home", str(home), "--json",
            "--config", str(config)]


def _ingest(landing: Path, home: Path) -> dict:
    result = subprocess.run(
        _command(landing, home),
        env=_cli_env(), capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _state(home: Path) -> dict[str, bytes]:
    state = {f"{part}/{k}": v for part in ("store", "cache", "quarantine") for k, v in tree_files(home / part).items()}
    return {k: v for k, v in state.items() if not k.startswith("store/parts/")}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    from medmeta.synth.generate import generate_cohort, generate_images

    landing = tmp_path / "landing"
    generate_cohort(landing, patients=60, seed=5, faults=False)
    generate_images(landing / "extra_images", count=400, size=128, seed=5)

    reference = tmp_path / "reference"
    expected = _ingest(landing, reference)

    home = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(landing, home),
        env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
    )
    staged = home / "store" / "parts" / "images-64"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if staged.exists() and len(list(staged.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its decode workers, mid-write
    proc.wait()
    assert not (home / "store" / "manifest.json").exists(), "killed before it could build a snapshot"
    batches_before_kill = len(list(staged.glob("*.parquet")))
    assert 0 < batches_before_kill * 32 < expected["images"]

    rerun = _ingest(landing, home)
    assert rerun["snapshot"] == expected["snapshot"]
    assert rerun["files_seen"] == expected["files_seen"]
    assert _state(home) == _state(reference)
