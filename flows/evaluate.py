"""The evaluation flow: a trained model and the two baselines on the same meta-test episodes."""

from __future__ import annotations

from prefect import flow

from flows import run_names
from medmeta.home import Home
from medmeta.settings import Settings, load_settings
from tasks.training import evaluate_model_task


@flow(name="evaluate", persist_result=False, flow_run_name=run_names.EVALUATE)
def evaluate_flow(model: str, home: str | None = None, settings: Settings | None = None,
                  nproc: int | None = None) -> dict:
    """``nproc``: evaluation processes (torchrun ranks); None takes the settings' ``train.nproc``
    (or ``MEDMETA_TRAIN_NPROC``), the world size training uses. ``settings``: None is the defaults."""
    return evaluate_model_task(Home.at(home), model, settings or load_settings(), nproc)
