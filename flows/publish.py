"""The publish flow: an evaluated model to the registry, through the champion/challenger gate."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.training.settings import load_settings
from tasks.training import publish_model_task


@flow(name="publish", persist_result=False, flow_run_name=run_names.PUBLISH)
def publish_flow(model: str, home: str | None = None, config: str | None = None) -> dict:
    return publish_model_task(Home.at(home), model, load_settings(config))
