"""The landing watcher's announcement: ``medmeta.cases.arrived``, counts only, the landing by its
keyed token (``deployments.definitions.arrival_resource``)."""

from __future__ import annotations

from medmeta.landing.changes import LandingChanges

CASES_ARRIVED = "medmeta.cases.arrived"  # the on-new-cases deployment's trigger expects it


def announce_arrival(landing_token: str, changes: LandingChanges) -> None:
    """Emit ``medmeta.cases.arrived`` for the landing with token ``landing_token``: counts only.
    Outside a flow run (the watcher of ``medmeta serve``) the event goes straight to the server."""
    from prefect.events import emit_event

    emit_event(event=CASES_ARRIVED, resource={"prefect.resource.id": f"medmeta.landing.{landing_token}"},
               payload=changes.payload())
