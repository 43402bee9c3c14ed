"""The command line: fast start-up, exactly one JSON object with --json, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_help_does_not_import_heavy_modules():
    code = ("import sys; sys.argv=['medmeta','--help']\n"
            "try:\n  import medmeta.cli as c; c.main()\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('prefect','great_expectations','pydicom','pandas','torch') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_synth_and_ingest_print_exactly_one_json_object(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    env = {"MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_API_URL": PREFECT_API_URL.value()}
    synth = run_cli("synth", "--out", str(tmp_path / "landing"), "--patients", "30", "--seed", "1", "--json")
    assert synth.returncode == 0, synth.stderr
    json.loads(synth.stdout)
    result = run_cli("ingest", str(tmp_path / "landing"), "--home", str(tmp_path / "home"), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # the whole of stdout is one object
    for key in ("files_seen", "files_ingested", "files_unchanged", "files_quarantined", "quarantined",
                "patients", "records", "images", "snapshot"):
        assert key in summary


def test_missing_key_and_missing_source_are_clear_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MEDMETA_PSEUDONYM_KEY"}
    (tmp_path / "landing").mkdir()
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "ingest", str(tmp_path / "landing"),
                             "--home", str(tmp_path / "home")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 2 and "no pseudonym key" in result.stderr
    result = run_cli("ingest", str(tmp_path / "nowhere"), "--home", str(tmp_path / "home"),
                     env={"MEDMETA_PSEUDONYM_KEY": TEST_KEY})
    assert result.returncode == 2 and "no such file or folder" in result.stderr


def test_key_create_is_owner_only_and_kept(tmp_path):
    first = json.loads(run_cli("key", "create", "--home", str(tmp_path / "h"), "--json").stdout)
    again = json.loads(run_cli("key", "create", "--home", str(tmp_path / "h"), "--json").stdout)
    assert first["created"] and not again["created"] and first["fingerprint"] == again["fingerprint"]
    assert (Path(first["key_file"]).stat().st_mode & 0o777) == 0o600
