"""Two pipeline runs started together train one after the other (the `medmeta-training` global
concurrency limit of one slot), and both complete: the second waits, it does not fail.

To make "they would have overlapped" certain rather than likely, the test holds the one slot
itself until both runs have built their task sets and are waiting at training; then it lets go.
Each run has its own home (a copy of the triggered run's, so ingest has nothing new) and its own
number of training steps, so both really train (neither finds a cached model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tests.operate_fixtures import ROOT, TINY_SETTINGS, api, flow_runs, medmeta_env, subflow_runs, write_settings
from tests.prefect_server import wait_until

pytestmark = pytest.mark.slow


HOLD_SLOT = """\
import sys
from prefect.concurrency.sync import concurrency
with concurrency(sys.argv[1], occupy=1, strict=True):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextmanager
def slot_held(url: str, name: str):
    """Hold the limit's one slot from a process of its own whose whole Prefect context is the
    server's (a lease renewed from a thread of the test process could go to the test harness)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SLOT, name], env=medmeta_env(url), cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_two_pipeline_runs_started_together_train_one_after_the_other(triggered_run, tmp_path):
    from medmeta import registry
    from tasks.concurrency import TRAINING_LIMIT

    url, served = triggered_run.served.server.url, triggered_run.served
    homes = [tmp_path / "home-a", tmp_path / "home-b"]
    processes = []
    with api(url):  # the test's own Prefect calls go to the same server
        with slot_held(url, TRAINING_LIMIT):
            for home, steps in zip(homes, (3, 5)):
                shutil.copytree(served.home, home)
                config = write_settings(home.with_suffix(".yaml"), TINY_SETTINGS.replace("steps: 4,", f"steps: {steps},"))
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "medmeta.cli", "run", str(served.landing), "--home", str(home),
                     "--config", str(config), "--json"], env=medmeta_env(url), cwd=ROOT, text=True,
                    stdout=subprocess.PIPE, stderr=open(home.with_suffix(".log"), "w")))

            def waiting_at_training():
                for process in processes:
                    assert process.poll() is None, f"a pipeline run ended early: {process.stderr}"
                runs = _pipeline_runs(url, homes)
                stages = [[name for name, sub in subflow_runs(url, run.id) if sub.state.is_completed()] for run in runs]
                return len(runs) == 2 and all("build-tasksets" in done for done in stages)

            wait_until(waiting_at_training, 300, every_s=2, what="both pipeline runs to reach training")
            for run in _pipeline_runs(url, homes):  # holding the slot: neither has started training
                assert "train" not in [name for name, _ in subflow_runs(url, run.id)]
        outputs = [process.communicate(timeout=480)[0] for process in processes]

    for process, home, output in zip(processes, homes, outputs):
        assert process.returncode == 0, home.with_suffix(".log").read_text()[-3000:]
        summary = json.loads(output)
        assert summary["state"] == "COMPLETED" and [m["trained"] for m in summary["models"]] == [True]
        [name] = registry.model_names(home)
        assert registry.versions(home, name) == [1, 2]  # a new version beside the copied one

    trains = []
    for run in _pipeline_runs(url, homes):
        assert run.state.is_completed()
        [train] = [sub for name, sub in subflow_runs(url, run.id) if name == "train"]
        assert train.state.is_completed()
        trains.append(train)
    first, second = sorted(trains, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, (
        f"the train runs overlap: {first.start_time}-{first.end_time} and {second.start_time}-{second.end_time}")


def _pipeline_runs(url: str, homes) -> list:
    return [r for r in flow_runs(url, "pipeline") if r.parameters.get("home") in {str(h) for h in homes}]


def test_the_limit_is_created_with_one_slot_and_an_operators_change_is_kept(operate_server):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from tasks.concurrency import TRAINING_LIMIT, ensure_training_limit

    with api(operate_server.url) as client:
        ensure_training_limit()
        assert client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).limit == 1
        client.update_global_concurrency_limit(TRAINING_LIMIT, GlobalConcurrencyLimitUpdate(limit=3))
        try:
            ensure_training_limit()
            assert client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).limit == 3
        finally:
            client.update_global_concurrency_limit(TRAINING_LIMIT, GlobalConcurrencyLimitUpdate(limit=1))
