"""A real ``prefect server start`` on 127.0.0.1 at a free port, with its own home (for the
tests of schedules, event triggers and the UI, which the test harness's API does not run)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from deployments.server import server_environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float, every_s: float = 0.5, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(every_s)


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def prefect_server(home: Path, log: Path) -> Iterator[str]:
    """Yield the API URL of a healthy server whose database lives under ``home``."""
    port = free_port()
    env = server_environment(home, port)
    env["PREFECT_HOME"] = str(home)  # its own database, whatever PREFECT_HOME the tests run with
    for name in [k for k in env if "DATABASE" in k and k.startswith("PREFECT_")]:
        del env[name]
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    prefect = str(Path(sys.executable).with_name("prefect"))
    with open(log, "wb") as out:
        process = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with until_stopped(process, port, log, "the Prefect server") as url:
        yield url


@contextmanager
def until_stopped(process: subprocess.Popen, port: int, log: Path, what: str) -> Iterator[str]:
    """Yield the API URL of the server ``process`` started on ``port`` once it is healthy (its log's
    tail in the error if it exits first); stop it (its whole process group) afterwards."""
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 120, what=what)
        yield url
    finally:
        stop(process)
