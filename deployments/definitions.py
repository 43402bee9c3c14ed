"""The deployments medmeta serves: a nightly pipeline (the full retrain), and an arrival run
(flows/arrival.py, the fast path) triggered by the landing watcher's ``medmeta.cases.arrived`` event
for this landing folder (``arrival_resource``).

Both run on the process that serves them (``medmeta serve``, which also runs the one long-lived
watcher, ``medmeta.landing.watcher``: no flow run per look) or, with ``prefect deploy`` and
``prefect.yaml``, on a process work pool's workers.

Prefect holds the landing folder by its keyed token only (a path can name a patient): the
deployments' ``landing`` parameter is the token, and the flow-run processes find the folder in
``$MEDMETA_LANDINGS`` (``landings_env``; ``medmeta serve`` sets it, a worker needs it in its
environment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medmeta.settings import Settings

NIGHTLY = "nightly"
ON_NEW_CASES = "on-new-cases"
WATCHER = "landing-watcher"  # prefect.yaml's long-lived watcher flow run (sites with workers); serve runs none
ARRIVAL_RESOURCE_PREFIX = "medmeta.landing."
WATCHING = "watching landing"  # in serve's first line once the watcher has made its first look


@dataclass(frozen=True)
class ServeSettings:
    landing: str  # the folder's path: never handed to Prefect, see landing_token
    home: str
    settings: "Settings | None" = None  # medmeta's settings, read where serve started (None: the defaults)
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    watch_every_s: int = 30  # how often the polling fallback looks (inotify needs no interval)
    watch_polling: bool = False  # poll instead of inotify (a network file system inotify does not see)
    settle_s: float = 2.0  # quiet time before a look; files younger than this are still being written


def landing_token(settings: ServeSettings) -> str:
    """The token the deployments give for the landing folder (keyed with the home's key)."""
    from flows.landing_flow import home_pseudonymizer
    from medmeta.ingest.landings import register_landing

    return register_landing(settings.landing, home_pseudonymizer(settings.home))


def arrival_resource(landing: str) -> str:
    """The resource id of the ``medmeta.cases.arrived`` events of the landing with token ``landing``."""
    return f"{ARRIVAL_RESOURCE_PREFIX}{landing}"


def landings_env(settings: ServeSettings) -> dict[str, str]:
    """The environment that lets the deployments' flow-run processes resolve the landing token."""
    from medmeta.ingest.landings import LANDINGS_ENV, landings_environment

    return {LANDINGS_ENV: landings_environment([settings.landing])}


def build_deployments(settings: ServeSettings) -> list:
    """The two ``RunnerDeployment``s (nightly, on-new-cases), ready for a ``Runner``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.arrival import arrival_flow
    from flows.pipeline import pipeline_flow
    from tasks.watch import CASES_ARRIVED

    landing = landing_token(settings)
    # the settings as JSON values: the deployments' parameters, shown and editable in a custom run's form
    parameters = {"landing": landing, "home": settings.home,
                  "settings": settings.settings.model_dump(mode="json") if settings.settings is not None else None}
    # one run of each pipeline deployment at a time: a second one waits (ingest holds the home's lock)
    one_then_queue = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    nightly = pipeline_flow.to_deployment(
        name=NIGHTLY, schedules=[Cron(settings.cron, timezone=settings.timezone)], parameters=parameters,
        concurrency_limit=one_then_queue,
        description=f"The whole pipeline every night ({settings.cron}, {settings.timezone}).", tags=["medmeta"],
    )
    on_new_cases = arrival_flow.to_deployment(
        name=ON_NEW_CASES, parameters=parameters, tags=["medmeta"], concurrency_limit=one_then_queue,
        # this landing's events only: an arrival in another landing folder starts nothing here
        triggers=[DeploymentEventTrigger(name="new case data", expect={CASES_ARRIVED},
                                         match={"prefect.resource.id": arrival_resource(landing)})],
        description="The arrival fast path (flows/arrival.py) whenever the landing watcher reports new or changed files.",
    )
    return [nightly, on_new_cases]
