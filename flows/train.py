"""The training flow: meta-train one algorithm on one task set (resumable, watched live)."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.settings import Settings, load_settings
from tasks.training import train_model_task


@flow(name="train", persist_result=False, flow_run_name=run_names.TRAIN)
def train_flow(taskset: str, algorithm: str, home: str | None = None, settings: Settings | None = None,
               nproc: int | None = None) -> dict:
    """``nproc``: training processes (torchrun ranks); None takes the settings' ``train.nproc``
    (``MEDMETA_TRAIN_NPROC`` overrides it). ``settings``: None is the defaults."""
    return train_model_task(Home.at(home), taskset, algorithm, settings or load_settings(), nproc)
