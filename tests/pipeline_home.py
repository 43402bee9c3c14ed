"""A small home built by the real pipeline (synth -> ingest -> task sets -> train -> evaluate ->
publish -> adapt) at tiny settings, for the predict and adapt tests; needs the ``prefect_api`` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_KEY

PATIENTS, SEED = 150, 5
IMAGES = {"by": "disease", "inputs": "images", "ways": 2, "shots": 2, "queries": 2, "seed": 0}
RECORDS = {"by": "disease", "inputs": "records", "ways": 2, "shots": 2, "queries": 2, "seed": 0}
DRUGS = {"by": "drug", "inputs": "records", "shots": 2, "queries": 3, "seed": 0}  # 2 drugs too rare: adaptation


def tiny_settings(tasksets: list[dict], algorithms: list[str]) -> dict:
    return {
        "tasksets": tasksets,
        "train": {"algorithms": algorithms, "steps": 2, "meta_batch": 2, "val_every": 2, "val_episodes": 2,
                  "checkpoint_every": 2,
                  "backbone": {"images": {"name": "conv4", "hidden": 4}, "records": {"name": "mlp", "hidden": [16]}}},
        "evaluate": {"episodes": 2, "shots": [2], "baseline_steps": 1, "pretrain_steps": 2},
        "publish": {"shots": 2, "adapt": True},
    }


def build_home(base: Path, tasksets: list[dict], algorithms: list[str]) -> dict:
    """Write the cohort and run the pipeline once; returns paths and the run summary."""
    import torch

    from flows.pipeline import pipeline_flow
    from medmeta.synth.generate import generate_cohort

    landing, home, config = base / "landing", base / "home", base / "settings.yaml"
    cohort = generate_cohort(landing, patients=PATIENTS, seed=SEED)
    config.write_text(yaml.safe_dump(tiny_settings(tasksets, algorithms)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
            state = pipeline_flow(str(landing), str(home), str(config), return_state=True)
    finally:
        torch.set_num_threads(threads)
    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), state.message
    return {"landing": landing, "home": home, "config": config, "summary": summary, "labels": cohort["labels"]}
