"""What the operate tests share, paid for once per session: a real Prefect server (``medmeta server``
on PostgreSQL, see ``operate_server``), one synthetic cohort, ``medmeta serve`` on a landing folder, and
the pipeline run the new cases triggered.

Registered as fixtures by tests/conftest.py; used by tests/test_deployments.py, test_ui.py,
test_training_limit.py and test_pipeline_validation.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests import postgres_cluster
from tests.prefect_server import free_port, stop, until_stopped, wait_until

ROOT = Path(__file__).resolve().parents[1]
TINY_SETTINGS = """\
train: {algorithms: [protonet], steps: 4, val_every: 2, val_episodes: 2, checkpoint_every: 2}
evaluate: {episodes: 4, shots: [5], baseline_steps: 1, pretrain_steps: 2}
publish: {adapt: false}
"""  # seconds per stage: these tests are about operating the pipeline, not about its models
CRON = "17 3 1 1 *"  # once a year: never fires while the tests run
TIMEZONE = "Europe/Berlin"
TRIGGERED_RUN_TIMEOUT_S = 480


def medmeta_env(api_url: str | None, **more: str) -> dict[str, str]:
    """The environment of a ``medmeta`` subprocess: this checkout first, the test key, the given API."""
    from tests.conftest import TEST_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MEDMETA_PSEUDONYM_KEY"] = TEST_KEY
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_HOME"] = os.environ["PREFECT_HOME"]  # tests/conftest.py: a temp folder
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(more)
    return env


def medmeta(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@contextmanager
def api(url: str):
    """A sync Prefect client of the server at ``url`` (whatever PREFECT_API_URL says)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


def flow_runs(url: str, flow_name: str | None = None, **filters) -> list:
    """Flow runs on the server at ``url`` (of one flow when named), oldest expected start first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    flow_filter = FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None
    with api(url) as client:
        return client.read_flow_runs(flow_filter=flow_filter, flow_run_filter=FlowRunFilter(**filters),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)


def subflow_runs(url: str, parent_id) -> list[tuple[str, object]]:
    """(flow name, flow run) of the subflow runs of ``parent_id``, in order (those of subflows too)."""
    from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId

    runs = flow_runs(url, parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
    with api(url) as client:
        names = {flow.id: flow.name for flow in client.read_flows()}
    return [(names[r.flow_id], r) for r in runs]


def write_settings(path: Path, text: str = TINY_SETTINGS) -> Path:
    path.write_text(text)
    return path


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/api
    log: Path
    database: str | None = None  # the PostgreSQL URL it runs on (with its password); None: SQLite in its home
    home: Path | None = None  # the medmeta home it was started with

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


@dataclass
class Served:
    server: Server
    process: subprocess.Popen
    log: Path
    landing: Path
    home: Path
    config: Path

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@dataclass
class TriggeredRun:
    served: Served
    run: object  # the on-new-cases pipeline flow run (Prefect FlowRun), Completed
    subflows: list  # (flow name, flow run) of its subflows: ingest, build-tasksets, train, evaluate, publish


@dataclass
class PostgresServer:
    """Where the tests' PostgreSQL is: ``url`` (its user may create databases), or None and ``reason``."""

    url: str | None
    reason: str = ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """``$MEDMETA_TEST_POSTGRES_URL``, else a throwaway cluster of this session (.ci/postgres.sh), else
    none with the reason; with ``MEDMETA_REQUIRE_POSTGRES=1`` (CI) none is a failure."""
    if os.environ.get(postgres_cluster.TEST_URL_ENV):
        yield PostgresServer(os.environ[postgres_cluster.TEST_URL_ENV])
        return
    reason = postgres_cluster.why_no_cluster()
    if reason is None:
        try:
            folder, url = postgres_cluster.start_cluster()
        except RuntimeError as error:
            reason = str(error)
        else:
            try:
                yield PostgresServer(url)
            finally:
                postgres_cluster.stop_cluster(folder)
            return
    if postgres_cluster.required():
        pytest.fail(f"{postgres_cluster.REQUIRE_ENV}=1 but there is no PostgreSQL: {reason}; "
                    f"set {postgres_cluster.TEST_URL_ENV} or install PostgreSQL")
    yield PostgresServer(None, reason)


@contextmanager
def medmeta_server(home: Path, log: Path, database: str | None = None) -> Iterator[str]:
    """``medmeta server --home HOME [--database URL]`` on a free port; yield its API URL once healthy.

    The URL goes in ``$MEDMETA_DATABASE_URL`` (as an operator would keep it out of the process list);
    without one the server's SQLite database is in HOME/prefect, whatever PREFECT_* the tests run with.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MEDMETA_DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if database:
        env["MEDMETA_DATABASE_URL"] = database
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "medmeta.cli", "server", "--home", str(home),
                                    "--port", str(port)],
                                   env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with until_stopped(process, port, log, "medmeta server") as url:
        yield url


@pytest.fixture(scope="session")
def operate_server(postgres_server, tmp_path_factory) -> Iterator[Server]:
    """``medmeta server`` on PostgreSQL (a database of this session alone: xdist workers never share
    one) on 127.0.0.1, its own home; the same for every operate test. Without PostgreSQL (and without
    MEDMETA_REQUIRE_POSTGRES) it falls back to SQLite, with a warning in the test summary."""
    folder = tmp_path_factory.mktemp("prefect-server")
    home, log = folder / "home", folder / "server.log"
    if postgres_server.url is None:
        warnings.warn(f"THE OPERATE TESTS RUN ON SQLITE, NOT POSTGRESQL: {postgres_server.reason}", stacklevel=1)
        with medmeta_server(home, log) as url:
            yield Server(url=url, log=log, home=home)
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with postgres_cluster.fresh_database(postgres_server.url, f"operate_{worker}") as database:
        with medmeta_server(home, log, database) as url:
            yield Server(url=url, log=log, database=database, home=home)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """A synthetic 240-patient cohort (written once; copy it before changing it)."""
    out = tmp_path_factory.mktemp("cohort") / "landing"
    result = medmeta("synth", "--out", str(out), "--patients", "240", "--seed", "0", env=medmeta_env(None))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def served(operate_server, tmp_path_factory) -> Iterator[Served]:
    """``medmeta serve`` on an empty landing folder, its deployments registered; stopped with SIGTERM."""
    folder = tmp_path_factory.mktemp("served")
    landing, home = folder / "landing", folder / "home"
    landing.mkdir()
    config = write_settings(folder / "tiny.yaml")
    log = folder / "serve.log"
    env = medmeta_env(operate_server.url, PREFECT_RUNNER_POLL_FREQUENCY="2")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medmeta.cli", "serve", "--landing", str(landing), "--home", str(home),
             "--config", str(config), "--cron", CRON, "--timezone", TIMEZONE, "--watch-every", "3"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    handle = Served(server=operate_server, process=process, log=log, landing=landing, home=home, config=config)

    def registered():
        if process.poll() is not None:
            raise RuntimeError(f"medmeta serve exited with {process.returncode}: {handle.log_tail()}")
        return len(_deployment_names(operate_server.url)) >= 2 and _watcher_has_looked(handle)

    try:
        wait_until(registered, 180, every_s=1, what="medmeta serve to register its deployments")
        yield handle
    finally:
        stop(process, timeout_s=30)
        print(f"medmeta serve stopped with {process.returncode}; its log: {log}")
    assert process.returncode == 0, f"medmeta serve did not stop cleanly on SIGTERM: {handle.log_tail()}"


def _deployment_names(url: str) -> set[str]:
    with api(url) as client:
        return {d.name for d in client.read_deployments()}


def _watcher_has_looked(served: Served) -> bool:
    """The serve process's watcher has looked at the (empty) landing folder once: later files are new to it."""
    from deployments.definitions import WATCHING

    return WATCHING in served.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def triggered_run(served, cohort) -> TriggeredRun:
    """Drop the cohort into the served landing folder; the pipeline run it triggered, once Completed."""
    from deployments.definitions import ON_NEW_CASES
    from prefect.client.schemas.filters import FlowRunFilterDeploymentId

    url = served.server.url
    with api(url) as client:
        deployment = client.read_deployment_by_name(f"arrival/{ON_NEW_CASES}")
    staging = served.landing.with_name("staging")  # copied beside it, then renamed in: arrives at once
    shutil.copytree(cohort, staging)
    for entry in staging.iterdir():
        entry.rename(served.landing / entry.name)
    by_deployment = FlowRunFilterDeploymentId(any_=[deployment.id])

    def finished():
        if served.process.poll() is not None:
            raise RuntimeError(f"medmeta serve exited with {served.process.returncode}: {served.log_tail()}")
        runs = [r for r in flow_runs(url, deployment_id=by_deployment) if r.state and r.state.is_final()]
        return runs[0] if runs else None

    run = wait_until(finished, TRIGGERED_RUN_TIMEOUT_S, every_s=3, what="the on-new-cases pipeline run")
    assert run.state.is_completed(), f"{run.state.type.value}: {run.state.message}\n{served.log_tail()}"
    return TriggeredRun(served=served, run=run, subflows=subflow_runs(url, run.id))
