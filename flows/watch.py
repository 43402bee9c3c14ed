"""The landing watcher as one long-lived flow run, for sites that run Prefect workers instead of
``medmeta serve`` (prefect.yaml's ``landing-watcher``: started once, it watches until cancelled).
``medmeta serve`` runs the same watcher in its own process, with no flow run at all."""

from __future__ import annotations

import threading

from flows import run_names
from flows.landing_flow import home_pseudonymizer, landing_flow


@landing_flow("landing", name="watch-landing", persist_result=False, flow_run_name=run_names.dated("watch"))
def watch_landing_flow(landing: str | None = None, home: str | None = None, settle_s: float = 2.0,
                       run_for_s: float | None = None, polling: bool = False) -> dict:
    """Watch the landing folder and emit ``medmeta.cases.arrived`` per arrival until cancelled (or
    for ``run_for_s`` seconds; 0: the first look only). ``landing``: the folder's path in process,
    its landing token from Prefect; None for the one folder in ``$MEDMETA_LANDINGS``. Returns the
    number of looks and arrivals."""
    from prefect import get_run_logger

    from medmeta.home import Home
    from medmeta.ingest.landings import landing_token, resolve_landing
    from medmeta.landing.changes import LandingLook
    from medmeta.landing.watcher import LandingWatcher
    from tasks.watch import announce_arrival

    the_home = Home.at(home)
    pseudonymizer = home_pseudonymizer(home)
    folder = resolve_landing(landing, pseudonymizer)
    token = landing_token(folder, pseudonymizer)
    if run_for_s == 0:  # one look against the ledger, announced when something is new
        changes = LandingLook.from_ledger(folder, the_home.ledger, pseudonymizer).look(settle_s)
        if changes.arrived:
            announce_arrival(token, changes)
        return changes.payload()
    logger = get_run_logger()

    def arrived(changes) -> None:
        announce_arrival(token, changes)
        logger.info("landing %s: %d new, %d changed files: medmeta.cases.arrived", token, changes.new, changes.changed)

    watcher = LandingWatcher(folder, the_home.ledger, pseudonymizer, arrived, settle_s=settle_s, polling=polling)
    watcher.start()
    logger.info("watching landing %s (%s)", token, watcher.mode)
    try:
        threading.Event().wait(run_for_s)
    finally:
        watcher.stop()
    return {"looks": watcher.looks, "arrivals": watcher.arrivals}
