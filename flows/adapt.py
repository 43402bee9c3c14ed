"""The adaptation flow: each task set's champion adapted to the classes left out of meta-training
(rare diseases, drugs with few cases), published as versions linked to their parent."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.tasksets.store import list_tasksets, read_manifest
from medmeta.settings import Settings
from tasks.training import adapt_models_task


@flow(name="adapt", persist_result=False, flow_run_name=run_names.adapt_run_name)
def adapt_flow(home: str | None = None, settings: Settings | None = None, taskset: str | None = None) -> dict:
    """Adapt one task set's champion (or every task set's); returns ``{"adapted": [...]}``, one entry per class.
    ``settings``: medmeta's settings (medmeta/settings.py; None: the defaults), checked where the command started."""
    the_home = Home.at(home)
    names = [read_manifest(the_home, taskset)["name"]] if taskset else [m["name"] for m in list_tasksets(the_home)]
    return {"adapted": [entry for name in names for entry in adapt_models_task(the_home, name)]}
