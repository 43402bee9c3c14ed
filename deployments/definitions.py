"""The deployments medmeta serves: a nightly pipeline, a landing watcher, and a pipeline run
triggered by the watcher's ``medmeta.cases.arrived`` event (tasks/watch.py).

All three run on the process that serves them (``medmeta serve``) or, with ``prefect deploy``
and ``prefect.yaml``, on a process work pool's workers.

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
WATCHER = "landing-watcher"


@dataclass(frozen=True)
class ServeSettings:
    landing: str  # the folder's path: never handed to Prefect, see landing_token
    home: str
    settings: "Settings | None" = None  # medmeta's settings, read where serve started (None: the defaults)
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    watch_every_s: int = 30


def landing_token(settings: ServeSettings) -> str:
    """The token the deployments give for the landing folder (keyed with the home's key)."""
    from flows.landing_flow import home_pseudonymizer
    from medmeta.ingest.landings import register_landing

    return register_landing(settings.landing, home_pseudonymizer(settings.home))


def landings_env(settings: ServeSettings) -> dict[str, str]:
    """The environment that lets the deployments' flow-run processes resolve the landing token."""
    from medmeta.ingest.landings import LANDINGS_ENV, landings_environment

    return {LANDINGS_ENV: landings_environment([settings.landing])}


def build_deployments(settings: ServeSettings) -> list:
    """The three ``RunnerDeployment``s, ready for ``prefect.serve``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.pipeline import pipeline_flow
    from flows.watch import watch_landing_flow
    from tasks.watch import CASES_ARRIVED

    landing = landing_token(settings)
    # the settings as JSON values: the deployments' parameters, shown and editable in a custom run's form
    parameters = {"landing": landing, "home": settings.home,
                  "settings": settings.settings.model_dump(mode="json") if settings.settings is not None else None}
    # one run of each pipeline deployment at a time: a second one waits (ingest holds the home's lock);
    # a look at the landing folder while the last one is still looking is dropped
    one_then_queue = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    one_then_drop = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    nightly = pipeline_flow.to_deployment(
        name=NIGHTLY, schedules=[Cron(settings.cron, timezone=settings.timezone)], parameters=parameters,
        concurrency_limit=one_then_queue,
        description=f"The whole pipeline every night ({settings.cron}, {settings.timezone}).", tags=["medmeta"],
    )
    on_new_cases = pipeline_flow.to_deployment(
        name=ON_NEW_CASES, parameters=parameters, tags=["medmeta"], concurrency_limit=one_then_queue,
        triggers=[DeploymentEventTrigger(name="new case data", expect={CASES_ARRIVED})],
        description="The whole pipeline whenever the landing watcher reports new or changed files.",
    )
    watcher = watch_landing_flow.to_deployment(
        name=WATCHER, interval=settings.watch_every_s, tags=["medmeta"], concurrency_limit=one_then_drop,
        parameters={"landing": landing, "home": settings.home},
        description=f"Looks at the landing folder every {settings.watch_every_s} s; emits {CASES_ARRIVED}.",
    )
    return [nightly, on_new_cases, watcher]
