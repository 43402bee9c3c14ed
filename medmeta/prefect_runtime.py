"""How medmeta runs flows against Prefect's embedded server.

With no ``PREFECT_API_URL``, Prefect starts a server inside this process that lives and dies
with it. Flow-run heartbeats exist so that a server can mark a run whose process died as
crashed; the embedded server dies with that process, so they can not serve their purpose, and
in Prefect 3.8 they cost every flow run about one second (the engine joins a thread that sleeps
in 1 s steps). Against a real server (``PREFECT_API_URL`` set: deployments, workers) they stay on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def embedded_run_settings() -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
