"""The landing watcher: run on a short interval, it emits ``medmeta.cases.arrived`` when new or
changed files have appeared in the landing folder since it last looked (counts only)."""

from __future__ import annotations

from flows import run_names
from flows.landing_flow import home_pseudonymizer, landing_flow
from medmeta.home import Home
from tasks.watch import announce_arrival, look_at_landing


@landing_flow("landing", name="watch-landing", persist_result=False, flow_run_name=run_names.dated("watch"))
def watch_landing_flow(landing: str | None = None, home: str | None = None, settle_s: float = 2.0) -> dict:
    """``landing``: the folder's path in process, its landing token from Prefect (the deployment's
    parameter); None for the one folder in ``$MEDMETA_LANDINGS``. The event names it by its token."""
    from medmeta.errors import MedmetaError
    from medmeta.ingest.landings import landing_token, resolve_landing

    the_home = Home.at(home)
    pseudonymizer = home_pseudonymizer(home)
    folder = resolve_landing(landing, pseudonymizer)
    token = landing_token(folder, pseudonymizer)
    if not folder.is_dir():  # said here by token: the message becomes the flow run's state in Prefect
        raise MedmetaError(f"the landing folder {token} does not exist")
    changes = look_at_landing(str(folder), the_home, settle_s)
    if changes["new"] or changes["changed"]:
        announce_arrival(token, changes)
    return changes
