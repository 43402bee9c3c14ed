"""The publish flow: an evaluated model to the registry, through the champion/challenger gate."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.settings import Settings, load_settings
from tasks.training import publish_model_task


@flow(name="publish", persist_result=False, flow_run_name=run_names.PUBLISH)
def publish_flow(model: str, home: str | None = None, settings: Settings | None = None) -> dict:
    """``settings``: medmeta's settings (their ``publish`` section decides); None is the defaults."""
    return publish_model_task(Home.at(home), model, settings or load_settings())
