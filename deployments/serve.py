"""``medmeta serve``: register the deployments with the Prefect server in ``PREFECT_API_URL``
and run their flows in this process until stopped (SIGTERM or Ctrl-C pauses their schedules)."""

from __future__ import annotations

import os

from deployments.definitions import ServeSettings, build_deployments, landings_env
from medmeta.errors import MedmetaError
from tasks.concurrency import ensure_training_limit


def require_server(timeout_s: float = 5.0) -> str:
    """The API URL of a healthy Prefect server, or a MedmetaError that says what is wrong."""
    import httpx

    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        raise MedmetaError(
            "no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to a running "
            "server; start a local one with `medmeta server`"
        )
    try:
        response = httpx.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError as error:
        raise MedmetaError(f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(error).__name__}); "
                           "is it running? `medmeta server` starts one") from None
    if response.status_code != 200:
        raise MedmetaError(f"the Prefect server at PREFECT_API_URL={url} is not healthy (HTTP {response.status_code})")
    return url


def serve(settings: ServeSettings) -> None:
    """Register and serve the nightly, watcher and on-new-cases deployments (blocks)."""
    from prefect import serve as prefect_serve

    require_server()
    ensure_training_limit()  # visible (Concurrency page) before the first pipeline trains
    os.environ.update(landings_env(settings))  # the flow-run subprocesses resolve the landing token with it
    deployments = build_deployments(settings)
    prefect_serve(*deployments, print_starting_message=True)
