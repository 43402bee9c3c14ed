"""Prefect tasks of the landing watcher: look at the folder, announce arrivals as an event."""

from __future__ import annotations

from prefect import task

from medmeta.home import Home
from tasks.options import NO_RESULTS

CASES_ARRIVED = "medmeta.cases.arrived"  # the deployments' trigger expects it


@task(name="look-at-landing", **NO_RESULTS)
def look_at_landing(landing: str, home: Home, settle_s: float) -> dict:
    """Counts of new, changed and removed files since the last look. One look at a time per home:
    two overlapping looks would both see the same new files and announce them twice."""
    from medmeta.landing.changes import look
    from medmeta.pseudonyms import Pseudonymizer, load_key
    from medmeta.registry.lock import exclusive

    with exclusive(home.root / "watch" / ".lock"):
        return look(landing, home, Pseudonymizer(load_key(home.key_file)), settle_s=settle_s).to_dict()


@task(name="announce-arrival", **NO_RESULTS)
def announce_arrival(landing_token: str, changes: dict) -> None:
    """Emit ``medmeta.cases.arrived``: counts only; the landing folder by its keyed token."""
    from prefect.events import emit_event

    emit_event(event=CASES_ARRIVED, resource={"prefect.resource.id": f"medmeta.landing.{landing_token}"},
               payload={k: int(v) for k, v in changes.items()})
