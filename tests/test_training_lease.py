"""A pipeline run killed with SIGKILL while it holds the `medmeta-training` slot (inside train,
evaluate or publish) does not keep it: the slot is a lease its holder renews, and once the
renewals stop it is given back (tasks/concurrency.py), so the next run trains.

Against a real ``prefect server start`` (the repossessor service gives it back) the test chains
four runs: the first is killed inside train, the second (which must get the slot) inside
evaluate, the third inside publish, and the fourth completes. Against medmeta's embedded server
(no ``PREFECT_API_URL``: no repossessor, and the server dies with the run) the next run gives it
back itself.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_home
from tests.operate_fixtures import ROOT, TINY_SETTINGS, api, flow_runs, medmeta_env, subflow_runs, write_settings
from tests.prefect_server import wait_until

pytestmark = pytest.mark.slow

SETTINGS = TINY_SETTINGS + "tasksets: [{by: disease, inputs: records, ways: 2, shots: 2, queries: 2, seed: 0}]\n"
SLOT_BACK_S = 60 + 10 + 60  # the lease, the repossessor's look, and the next run's start and ingest
LONG_TRAIN = SETTINGS.replace("steps: 4,", "steps: 1000000,")
LONG_EVALUATE = SETTINGS.replace("episodes: 4,", "episodes: 1000000,")


def _start_run(landing: Path, home: Path, settings: str, env: dict) -> subprocess.Popen:
    config = write_settings(home.with_suffix(".yaml"), settings)
    return subprocess.Popen([sys.executable, "-m", "medmeta.cli", "run", str(landing), "--home", str(home),
                             "--config", str(config), "--json"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=open(home.with_suffix(".log"), "w"),
                            start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the run and everything it started
    process.wait()


def _running_stage(url: str, home: Path, process: subprocess.Popen) -> str | None:
    """The subflow (train, evaluate, publish) the pipeline run into ``home`` is running now."""
    assert process.poll() is None, home.with_suffix(".log").read_text()[-3000:]
    runs = [r for r in flow_runs(url, "pipeline") if r.parameters.get("home") == str(home)]
    running = [name for run in runs for name, sub in subflow_runs(url, run.id) if sub.state.is_running()]
    return next((name for name in running if name in ("train", "evaluate", "publish")), None)


def _active_slots(url: str) -> int:
    from tasks.concurrency import TRAINING_LIMIT

    with api(url) as client:
        return client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).active_slots


def test_a_run_killed_inside_train_evaluate_or_publish_gives_the_slot_to_the_next(operate_server, cohort150,
                                                                               tmp_path):
    from medmeta.registry.store import PAUSE_ENV

    url, landing = operate_server.url, cohort150.parent / "landing"
    paused = tmp_path / "inside-publish"
    plan = [("train", LONG_TRAIN, {}), ("evaluate", LONG_EVALUATE, {}), ("publish", SETTINGS, {PAUSE_ENV: str(paused)})]
    for number, (stage, settings, more_env) in enumerate(plan):
        home = copy_home(cohort150, tmp_path / f"home-{number}")
        process = _start_run(landing, home, settings, medmeta_env(url, **more_env))
        try:  # the earlier run was killed holding the slot: this one only gets here when it was given back
            wait_until(lambda: _running_stage(url, home, process) == stage, SLOT_BACK_S + 240, every_s=1,
                       what=f"run {number} to be inside {stage}")
            if stage == "publish":
                wait_until(paused.exists, 120, what="publish to pause before its rename")
            assert _active_slots(url) == 1
        finally:
            _kill(process)
        assert _active_slots(url) == 1, "the slot is held by the killed run"

    home = copy_home(cohort150, tmp_path / "home-last")
    last = _start_run(landing, home, SETTINGS, medmeta_env(url))
    output, _ = last.communicate(timeout=SLOT_BACK_S + 480)
    assert last.returncode == 0, home.with_suffix(".log").read_text()[-3000:]
    assert json.loads(output)["state"] == "COMPLETED"
    assert _active_slots(url) == 0


def _embedded_env() -> dict:
    """No API address and no PREFECT_HOME: `medmeta run` starts its own server, database in H/prefect."""
    env = medmeta_env(None)
    del env["PREFECT_HOME"]
    return env


def _embedded_active_slots(home: Path) -> int:
    with sqlite3.connect(f"file:{home / 'prefect' / 'prefect.db'}?mode=ro", uri=True) as db:
        [(slots,)] = db.execute("SELECT active_slots FROM concurrency_limit_v2 WHERE name = 'medmeta-training'")
    return slots


def test_an_embedded_run_killed_inside_train_does_not_keep_the_slot_from_the_next(cohort150, tmp_path):
    landing = cohort150.parent / "landing"
    home = copy_home(cohort150, tmp_path / "home")
    killed = _start_run(landing, home, LONG_TRAIN, _embedded_env())
    try:
        def training():
            assert killed.poll() is None, home.with_suffix(".log").read_text()[-3000:]
            return any((home / "training").glob("*/checkpoint/*"))

        wait_until(training, 600, every_s=0.5, what="the embedded run to train")
    finally:
        _kill(killed)
    assert _embedded_active_slots(home) == 1, "the slot is held by the killed run"

    home.with_suffix(".log").rename(home.with_suffix(".killed.log"))
    following = _start_run(landing, home, SETTINGS, _embedded_env())
    try:
        output, _ = following.communicate(timeout=SLOT_BACK_S + 480)
    finally:
        if following.poll() is None:
            _kill(following)
    assert following.returncode == 0, home.with_suffix(".log").read_text()[-3000:]
    assert json.loads(output)["state"] == "COMPLETED"
    assert _embedded_active_slots(home) == 0
