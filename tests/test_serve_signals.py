"""Stopping cleanly: SIGTERM to `medmeta serve` with a pipeline run in flight, and SIGTERM to
`medmeta run` with its embedded Prefect server up. Real processes, real signals; schedules and
runs read back from the server, processes from the OS (psutil)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from deployments.definitions import NIGHTLY, ON_NEW_CASES, WATCHING
from tests.operate_fixtures import CRON, ROOT, TIMEZONE, api, medmeta_env, write_settings
from tests.prefect_server import prefect_server, stop, wait_until


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(processes: list[psutil.Process]) -> list[str]:
    """The ones still running (zombies reaped by nobody count as gone), as 'pid name'."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline()[:4])}")
        except psutil.NoSuchProcess:
            pass
    return left


def _start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medmeta.cli", *args], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_sigterm_to_serve_pauses_every_schedule_and_leaves_no_run_unfinished(tmp_path, cohort):
    """Its own server: a second `medmeta serve` on the session's would take over the shared deployments."""
    import shutil

    from prefect.client.schemas.objects import StateType

    landing, home = tmp_path / "landing", tmp_path / "home"
    shutil.copytree(cohort, landing)  # a pipeline with work to do while it is stopped
    config = write_settings(tmp_path / "tiny.yaml")
    log = tmp_path / "serve.log"
    with prefect_server(tmp_path / "server", tmp_path / "server.log") as url:
        env = medmeta_env(url, PREFECT_RUNNER_POLL_FREQUENCY="1")
        with open(log, "wb") as out:
            process = _start(["serve", "--landing", str(landing), "--home", str(home), "--config", str(config),
                              "--cron", CRON, "--timezone", TIMEZONE], env, out)
        try:
            wait_until(lambda: process.poll() is not None or WATCHING in log.read_text(errors="replace"), 180,
                       what="medmeta serve to start")
            assert process.poll() is None, log.read_text()
            # the watcher's first look finds the cohort (no ledger yet): one arrival, one pipeline run
            with api(url) as client:
                deployment = client.read_deployment_by_name(f"arrival/{ON_NEW_CASES}")

            def in_flight():
                from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

                with api(url) as client:
                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[deployment.id])))
                return [r for r in runs if r.state_type in (StateType.PENDING, StateType.RUNNING)]

            [run] = wait_until(in_flight, 120, every_s=0.2, what="the arrival's pipeline run to be submitted")
            time.sleep(1)  # its subprocess is starting
            children = _descendants(process.pid)
            os.killpg(process.pid, signal.SIGTERM)  # as Ctrl-C in a terminal and systemd do: the whole group
            process.wait(90)
        finally:
            stop(process)
        output = log.read_text(errors="replace")
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert _alive(children) == [], output[-3000:]
        with api(url) as client:
            deployments = [client.read_deployment_by_name(name) for name in (f"pipeline/{NIGHTLY}", f"arrival/{ON_NEW_CASES}")]
            after = client.read_flow_run(run.id)
    [nightly_schedule] = deployments[0].schedules
    assert nightly_schedule.active is False, "the nightly schedule is still active"
    assert all(d.paused for d in deployments)
    assert after.state.is_final(), f"left {after.state.type.value} ({after.state.name})"
    assert after.state.type in (StateType.CANCELLED, StateType.CRASHED) and after.state.message


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_medmeta_run_leaves_no_server_behind(tmp_path, cohort, signum):
    import shutil

    landing, home = tmp_path / "landing", tmp_path / "home"
    shutil.copytree(cohort, landing)
    log = tmp_path / "run.log"
    env = medmeta_env(None)
    with open(log, "wb") as out:
        process = _start(["run", str(landing), "--home", str(home), "--config",
                          str(write_settings(tmp_path / "tiny.yaml"))], env, out)
    try:
        def server_up():
            if process.poll() is not None:
                raise RuntimeError(f"medmeta run exited with {process.returncode}: {log.read_text()[-2000:]}")
            children = _descendants(process.pid)
            return children if any("uvicorn" in " ".join(c.cmdline()) or "prefect" in " ".join(c.cmdline())
                                   for c in children if c.is_running()) else None

        children = wait_until(server_up, 180, every_s=0.5, what="medmeta run's embedded server")
        time.sleep(3)  # into the pipeline
        children = _descendants(process.pid)
        process.send_signal(signum)  # `kill PID`: the command alone, not its group
        process.wait(90)
    finally:
        stop(process)
    output = log.read_text(errors="replace")
    assert process.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    wait_until(lambda: not _alive(children), 20, what=f"no orphan: {_alive(children)}")
