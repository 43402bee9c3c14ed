"""The command line: fast start-up, exactly one JSON object with --json, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmeta", *args], capture_output=True, text=True,
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


# -- ordinary mistakes: one line naming the thing and the reason, exit 2, before Prefect starts ----

MISTAKES = {  # command line (H: the home, L: an empty landing folder) -> what the one line says
    "ingest": (["ingest", "{tmp}/nowhere"], "no such file or folder"),
    "validate": (["validate"], "no snapshot in"),
    "tasks build --by": (["tasks", "build", "--by", "nope"], "--by must be one of disease, drug"),
    "tasks build": (["tasks", "build", "--by", "disease"], "no snapshot in"),
    "tasks build (settings)": (["tasks", "build"], "no snapshot in"),
    "train": (["train", "--taskset", "nope", "--algo", "protonet"], "no task set 'nope'"),
    "train --algo": (["train", "--taskset", "nope", "--algo", "nope"], "--algo must be one of"),
    "evaluate": (["evaluate", "nope"], "no trained model 'nope'"),
    "publish": (["publish", "nope"], "no trained model 'nope'"),
    "adapt": (["adapt", "--taskset", "nope"], "no task set 'nope'"),
    "run": (["run", "{tmp}/nowhere"], "no such file or folder"),
    "serve": (["serve", "--landing", "{tmp}/nowhere"], "the landing folder does not exist"),
    "predict": (["predict", "--model", "nope", "--query", "{tmp}/landing"], "no model named nope"),
    "models show": (["models", "show", "nope"], "no model named nope"),
    "short key": (["run", "{tmp}/landing"], "the pseudonym key must be at least 16 bytes long"),
    "bad settings": (["train", "--taskset", "nope", "--algo", "protonet", "--config", "{tmp}/bad.yaml"],
                     "bad.yaml: train.steps must be a positive integer, got 0"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_an_ordinary_mistake_is_one_line_and_exit_2(case, tmp_path):
    args, says = MISTAKES[case]
    (tmp_path / "landing").mkdir()
    (tmp_path / "bad.yaml").write_text("train: {steps: 0}\n")
    key = "short" if case == "short key" else TEST_KEY
    result = run_cli(*[a.format(tmp=tmp_path) for a in args], "--home", str(tmp_path / "home"),
                     env={"MEDMETA_PSEUDONYM_KEY": key, "PREFECT_API_URL": ""}, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-3000:]  # one line
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


COMMANDS_WITH_SETTINGS = [["ingest", "{tmp}/landing"], ["validate"], ["tasks", "build"],
                          ["train", "--taskset", "t", "--algo", "protonet"], ["evaluate", "m"], ["publish", "m"],
                          ["adapt"], ["run", "{tmp}/landing"], ["serve", "--landing", "{tmp}/landing"]]


@pytest.mark.parametrize("command", COMMANDS_WITH_SETTINGS, ids=lambda c: " ".join(c[:2]))
def test_every_command_takes_the_same_settings_file(command, tmp_path, monkeypatch):
    """In process (typer's runner): the same --config for every command, its errors naming file and key."""
    from typer.testing import CliRunner

    from medmeta.cli import app

    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "landing").mkdir()
    (tmp_path / "settings.yaml").write_text("ingest: {image_size: 4}\n")
    args = [a.format(tmp=tmp_path) for a in command]
    result = CliRunner().invoke(app, [*args, "--home", str(tmp_path / "home"), "--config",
                                      str(tmp_path / "settings.yaml")])
    assert result.exit_code == 2, result.output
    assert "settings.yaml: ingest.image_size must be greater than or equal to 8, got 4" in result.output

