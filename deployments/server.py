"""``medmeta server``: a local Prefect server bound to 127.0.0.1, its database in the home."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def server_environment(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    # Training-slot leases on disk (they outlive a restart) and looked at every 10 s: the slot of a
    # killed run is back within its lease (60 s) and 10 s (tasks/concurrency.py).
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
    env.setdefault("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "10")
    env.pop("PREFECT_API_URL", None)  # the server is the API; it must not point at another one
    return env


def run_server(home: Path, port: int) -> None:
    """Replace this process with ``prefect server start --host 127.0.0.1 --port PORT``."""
    env = server_environment(home, port)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    argv = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    os.execve(argv[0], argv, env)
