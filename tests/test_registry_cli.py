"""`medmeta models list|show`: one JSON object with --json, readable text without, exit 2 on errors."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from medmeta import registry
from medmeta.registry import Gate
from tests.test_cli import ROOT, run_cli


def publish_two(home):
    gate = Gate("mse", higher_is_better=False, margin=0.0)
    for mse in (0.5, 0.7):
        registry.publish(home, "sepsis-risk", {"w": torch.randn(4, 2)},
                         {"algorithm": "maml", "evaluation_id": "ev-1", "purpose": "Sepsis risk at a new site.",
                          "metrics": {"mse": {"mean": mse, "ci_low": mse - 0.1, "ci_high": mse + 0.1}}}, gate=gate)


def test_models_list_and_show(tmp_path):
    publish_two(tmp_path)
    listed = run_cli("models", "list", "--home", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    summary = json.loads(listed.stdout)
    assert summary["models"] == [{"name": "sepsis-risk", "versions": [1, 2], "latest": 2, "champion": 1,
                                  "challenger": 2, "algorithm": "maml",
                                  "metric": {"name": "mse", "value": 0.5, "version": 1, "evaluation_id": "ev-1"}}]
    human = run_cli("models", "list", "--home", str(tmp_path))
    assert "sepsis-risk: versions 1, 2; champion 1, challenger 2; maml, mse 0.5" in human.stdout

    shown = json.loads(run_cli("models", "show", "sepsis-risk@challenger", "--home", str(tmp_path), "--json").stdout)
    assert (shown["version"], shown["aliases"]) == (2, ["challenger"])
    assert shown["card"]["gate"]["decision"] == "challenger" and shown["card"]["metrics"]["mse"]["mean"] == 0.7
    text = run_cli("models", "show", "sepsis-risk", "--home", str(tmp_path)).stdout
    assert "# sepsis-risk v1" in text and "Sepsis risk at a new site." in text and "current aliases: champion" in text


def test_models_errors_exit_2_and_say_what_exists(tmp_path):
    empty = run_cli("models", "list", "--home", str(tmp_path), "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout)["models"] == []
    publish_two(tmp_path)
    missing = run_cli("models", "show", "sepsis-risk@9", "--home", str(tmp_path), "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "no version 9; versions: 1, 2; aliases: champion -> 1, challenger -> 2" in missing.stderr
    unknown = run_cli("models", "show", "nope", "--home", str(tmp_path))
    assert unknown.returncode == 2 and "models: sepsis-risk" in unknown.stderr
    bad = run_cli("models", "show", "Not/A/Slug", "--home", str(tmp_path))
    assert bad.returncode == 2 and "not a safe slug" in bad.stderr


def test_models_list_does_not_import_torch(tmp_path):
    publish_two(tmp_path)
    code = ("import sys; sys.argv=['medmeta','models','list','--home',sys.argv[1]]\n"
            "try:\n  import medmeta.cli as c; c.main()\nexcept SystemExit: pass\n"
            "print([m for m in ('prefect','pandas','torch','safetensors') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
