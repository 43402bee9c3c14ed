"""A real Dask cluster for the session: ``dask scheduler`` and two single-threaded ``dask worker``s on
127.0.0.1, their environment pointing at the session's Prefect API (fixture ``prefect_api``).

Registered as a fixture by tests/conftest.py; used by tests/test_ingest_dask.py. Each pytest-xdist
worker starts its own (as it has its own Prefect API). The workers run this checkout (PYTHONPATH)
and the test process's PREFECT_HOME; their logs go to files (``DaskCluster.logs``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")
START_TIMEOUT_S = 120


@dataclass
class DaskCluster:
    address: str
    api_url: str
    folder: Path  # scheduler file and logs
    processes: list[subprocess.Popen] = field(default_factory=list)

    def environment(self, **more: str) -> dict[str, str]:
        """A worker's environment: this checkout, the session's Prefect API and Prefect home."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDMETA_", "DASK_"))}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
                   PREFECT_API_URL=self.api_url, PREFECT_HOME=os.environ["PREFECT_HOME"],
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
        env.update(more)
        return env

    def start_worker(self, name: str, prefix: list[str] = (), nanny: bool = True, **env: str) -> subprocess.Popen:
        """``dask worker`` joining this cluster (``prefix``: a command it runs under, e.g. ``unshare``)."""
        command = [*prefix, DASK, "worker", self.address, "--nthreads", "1", "--name", name, "--host", "127.0.0.1",
                   "--no-dashboard", "--memory-limit", "0", "--preload", "tasks.dask_preload",
                   *([] if nanny else ["--no-nanny"])]
        log = open(self.folder / f"{name}.log", "ab")
        process = subprocess.Popen(command, env=self.environment(**env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, names: set[str]) -> None:
        """Until exactly the workers named ``names`` are connected."""
        with self.client() as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()} != names:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Dask workers did not come up; logs in {self.folder}")
                time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))

    def stop_all(self) -> None:
        """Workers and scheduler asked to stop at once, then waited for."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            self.stop(process)

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


WORKERS = {"worker-1", "worker-2"}


@contextmanager
def running_dask_cluster(api_url: str, folder: Path, workers: int = 2) -> Iterator[DaskCluster]:
    """``dask scheduler`` on a free port of 127.0.0.1 and ``workers`` single-threaded workers
    (``worker-1``...), their logs in ``folder``; stopped on exit. Also used by bench/scale.py."""
    scheduler_file = folder / "scheduler.json"
    cluster = DaskCluster(address="", api_url=api_url, folder=folder)
    log = open(folder / "scheduler.log", "ab")
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)],
                                 env=cluster.environment(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    cluster.processes.append(scheduler)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {(folder / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.1)
        cluster.address = json.loads(scheduler_file.read_text())["address"]
        names = {f"worker-{i + 1}" for i in range(workers)}
        for name in sorted(names):
            cluster.start_worker(name)
        cluster.wait_for_workers(names)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="session")
def dask_cluster(prefect_api, tmp_path_factory) -> Iterator[DaskCluster]:
    from prefect.settings import PREFECT_API_URL

    with running_dask_cluster(PREFECT_API_URL.value(), tmp_path_factory.mktemp("dask-cluster")) as cluster:
        yield cluster
