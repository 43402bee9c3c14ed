"""Nothing is written outside the medmeta home: matplotlib's font cache (and any XDG cache) goes to
``H/cache/``, checked with ``$HOME`` set to an empty folder, in a fresh process that plots and in a
real ``medmeta run`` (embedded Prefect server, its database in the home)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.test_cli import ROOT

PLOT = """
import sys
from pathlib import Path
from medmeta.home import Home
from medmeta.training.plots import accuracy_against_shots, training_curve
home = Home.at(sys.argv[1])
out = Path(sys.argv[2])
history = [{"step": s, "loss": 1 / s, "accuracy": 0.5} for s in (1, 2, 3)]
training_curve({"algorithm": "protonet", "taskset": "t", "history": history,
                "validations": [{"step": 2, "accuracy": 0.6}]}, out / "curve.png", home=home)
rows = [{"method": m, "mean": 0.6, "ci95": 0.1} for m in ("meta", "from_scratch")]
accuracy_against_shots({"model": "m", "ways": 2, "by_shots": [{"shots": 2, "rows": rows}]},
                       out / "evaluation.png", home=home)
"""


def clean_env(user_home: Path, **more: str) -> dict[str, str]:
    """This checkout on the path, $HOME empty, no cache or Prefect settings inherited."""
    dropped = ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in dropped}
    env.update(HOME=str(user_home), PYTHONPATH=str(ROOT), **more)
    return env


def written_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_plotting_in_a_fresh_process_keeps_matplotlib_caches_in_the_home(tmp_path):
    user_home, home, out = tmp_path / "user", tmp_path / "home", tmp_path / "out"
    for folder in (user_home, out):
        folder.mkdir()
    result = subprocess.run([sys.executable, "-c", PLOT, str(home), str(out)], capture_output=True, text=True,
                            env=clean_env(user_home), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "curve.png").stat().st_size > 0 and (out / "evaluation.png").stat().st_size > 0
    assert written_under(user_home) == []
    assert list((home / "cache" / "matplotlib").glob("fontlist-*.json"))


@pytest.mark.slow
def test_medmeta_run_writes_nothing_outside_the_home(tmp_path):
    user_home, home, landing = tmp_path / "user", tmp_path / "home", tmp_path / "landing"
    user_home.mkdir()
    settings = tmp_path / "tiny.yaml"
    settings.write_text(
        "tasksets:\n  - {by: disease, inputs: records, ways: 2, shots: 2, queries: 2, seed: 0}\n"
        "train: {algorithms: [protonet], steps: 4, val_every: 2, val_episodes: 2, checkpoint_every: 2,\n"
        "        backbone: {records: {name: mlp, hidden: [16]}}}\n"
        "evaluate: {episodes: 4, shots: [2], baseline_steps: 1, pretrain_steps: 2}\n"
        "publish: {adapt: false, shots: 2}\n")
    env = clean_env(user_home, MEDMETA_PSEUDONYM_KEY=TEST_KEY)

    def medmeta(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=900)

    assert medmeta("synth", "--out", str(landing), "--patients", "80", "--seed", "3").returncode == 0
    result = medmeta("run", str(landing), "--home", str(home), "--config", str(settings), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED" and summary["models"][0]["published"]["version"] == 1
    assert list(home.glob("training/**/curve.png")) and list(home.glob("training/**/evaluation.png"))
    assert written_under(user_home) == []
    assert list((home / "cache" / "matplotlib").glob("fontlist-*.json"))
