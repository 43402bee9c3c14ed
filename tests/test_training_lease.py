"""A pipeline run killed with SIGKILL while it holds the `medmeta-training` slot (inside train,
evaluate or publish) does not keep it: the slot is a lease its holder renews, and once the
renewals stop it is given back (tasks/concurrency.py), so the next run trains.

With medmeta's embedded server (no ``PREFECT_API_URL``: no repossessor, and the server dies with the
run) three homes are run at once, one killed inside each of train, evaluate and publish; the next
run on each home gives the expired lease back itself and completes. Against a real
``prefect server start`` (its repossessor service gives the slot back) a run killed inside train
lets the next run, on another home, train. The leases expire after Prefect's minimum of 60 s, so
the kills run side by side rather than one after another.
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
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the run and everything it started
    except ProcessLookupError:  # killed before, group and all
        pass
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


def test_a_run_killed_inside_train_gives_the_slot_to_the_next_on_a_prefect_server(operate_server, cohort150,
                                                                                     tmp_path):
    url, landing = operate_server.url, cohort150.parent / "landing"
    home = copy_home(cohort150, tmp_path / "home-killed")
    process = _start_run(landing, home, LONG_TRAIN, medmeta_env(url))
    try:
        wait_until(lambda: _running_stage(url, home, process) == "train", 600, every_s=1, what="the run to train")
        assert _active_slots(url) == 1
    finally:
        _kill(process)
    assert _active_slots(url) == 1, "the slot is held by the killed run"

    home = copy_home(cohort150, tmp_path / "home-next")
    following = _start_run(landing, home, SETTINGS, medmeta_env(url))
    output, _ = following.communicate(timeout=SLOT_BACK_S + 480)
    assert following.returncode == 0, home.with_suffix(".log").read_text()[-3000:]
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


def _embedded_running_stage(home: Path) -> str | None:
    """The stage (train, evaluate, publish) the embedded run into ``home`` is running, read from its database."""
    database = home / "prefect" / "prefect.db"
    if not database.exists():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            names = {name for (name,) in db.execute(
                "SELECT flow.name FROM flow_run JOIN flow ON flow_run.flow_id = flow.id "
                "WHERE flow_run.state_type = 'RUNNING'")}
    except sqlite3.Error:  # created but not yet migrated
        return None
    return next((stage for stage in ("train", "evaluate", "publish") if stage in names), None)


def test_embedded_runs_killed_inside_train_evaluate_and_publish_do_not_keep_the_slot(cohort150, tmp_path):
    from medmeta.registry.store import PAUSE_ENV

    landing = cohort150.parent / "landing"
    paused = tmp_path / "inside-publish"
    plan = {"train": (LONG_TRAIN, {}), "evaluate": (LONG_EVALUATE, {}), "publish": (SETTINGS, {PAUSE_ENV: str(paused)})}
    homes = {stage: copy_home(cohort150, tmp_path / f"home-{stage}") for stage in plan}
    killed = {stage: _start_run(landing, homes[stage], settings, {**_embedded_env(), **more})
              for stage, (settings, more) in plan.items()}
    held: dict[str, int] = {}

    def kill_each_inside_its_stage() -> bool:
        """Kill each run the moment it is inside its stage (a run left alone could finish it)."""
        for stage, process in killed.items():
            if stage in held:
                continue
            assert process.poll() is None, homes[stage].with_suffix(".log").read_text()[-3000:]
            if (paused.exists() if stage == "publish" else _embedded_running_stage(homes[stage]) == stage):
                _kill(process)
                held[stage] = _embedded_active_slots(homes[stage])
        return len(held) == len(killed)

    try:
        wait_until(kill_each_inside_its_stage, 600, every_s=0.5, what="each embedded run to be inside its stage")
    finally:
        for process in killed.values():
            _kill(process)
    assert held == {stage: 1 for stage in plan}, "each killed run held the slot"
    for stage, home in homes.items():
        assert _embedded_active_slots(home) == 1, f"the slot is still held by the run killed inside {stage}"
        home.with_suffix(".log").rename(home.with_suffix(".killed.log"))

    following = {stage: _start_run(landing, home, SETTINGS, _embedded_env()) for stage, home in homes.items()}
    try:
        outputs = {stage: process.communicate(timeout=SLOT_BACK_S + 480)[0] for stage, process in following.items()}
    finally:
        for process in following.values():
            if process.poll() is None:
                _kill(process)
    for stage, process in following.items():
        assert process.returncode == 0, homes[stage].with_suffix(".log").read_text()[-3000:]
        assert json.loads(outputs[stage])["state"] == "COMPLETED"
        assert _embedded_active_slots(homes[stage]) == 0
