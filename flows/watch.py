"""The landing watcher: run on a short interval, it emits ``medmeta.cases.arrived`` when new or
changed files have appeared in the landing folder since it last looked (counts only)."""

from __future__ import annotations

from prefect import flow

from medmeta.home import Home
from tasks.watch import announce_arrival, look_at_landing


@flow(name="watch-landing", persist_result=False)
def watch_landing_flow(landing: str, home: str | None = None, settle_s: float = 2.0) -> dict:
    from medmeta.landing.changes import landing_token
    from medmeta.pseudonyms import Pseudonymizer, load_key

    the_home = Home.at(home)
    changes = look_at_landing(landing, the_home, settle_s)
    if changes["new"] or changes["changed"]:
        token = landing_token(landing, Pseudonymizer(load_key(the_home.key_file)))
        announce_arrival(token, changes)
    return changes
