"""Meta-train one algorithm on one task set: the metalearn trainer over the task set's splits."""

from __future__ import annotations

import os
import time
from typing import Callable

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.models import build_learner, model_spec
from medmeta.training.runs import model_dir, model_name, read_json, run_identity, write_json
from medmeta.training.settings import PipelineSettings


def split_sampler(split, manifest: dict, *, shots: int, tasks: int, seed: int):
    """An ``EpisodeSampler`` over one split of a task set, with the task set's ways and queries."""
    from metalearn.sampler import EpisodeSampler

    return EpisodeSampler(**split.sampler_kwargs(), ways=int(manifest["ways"]), shots=shots,
                          queries=int(manifest["queries"]), tasks=tasks, seed=seed)


def train_model(home: Home, taskset: str, algorithm: str, settings: PipelineSettings,
                on_step: Callable | None = None, on_validation: Callable | None = None,
                nproc: int | None = None) -> dict:
    """Train (or resume, or find already trained) ``algorithm`` on ``taskset``; returns result.json.

    ``nproc`` (None: the settings' ``train.nproc``, which ``MEDMETA_TRAIN_NPROC`` overrides)
    training processes: above 1, torchrun ranks (``medmeta.training.ranked``) each train on a
    share of every meta-batch while this process waits, relaying rank 0's step and validation
    reports to ``on_step``/``on_validation``. The model's name does not depend on ``nproc``: a run
    checkpointed with one world size resumes with another.
    """
    from medmeta.training.ranked import check_nproc

    nproc = check_nproc(int(settings.train["nproc"]) if nproc is None else nproc, str(settings.train["device"]))
    if nproc == 1:
        return train_in_process(home, taskset, algorithm, settings, on_step=on_step, on_validation=on_validation)
    _, _, folder = _prepare(home, taskset, algorithm, settings)
    if (folder / "result.json").is_file():
        return {**read_json(folder / "result.json", "training result"), "cached": True}
    _launch(home, taskset, algorithm, settings, nproc, folder, on_step, on_validation)
    return {**read_json(folder / "result.json", "training result"), "cached": False}


def _launch(home: Home, taskset: str, algorithm: str, settings: PipelineSettings, nproc: int, folder,
            on_step: Callable | None, on_validation: Callable | None) -> None:
    import logging

    from medmeta.training.ranked import launch_ranks
    from metalearn.trainer import StepReport, ValidationReport

    log = logging.getLogger("medmeta.training")

    def relay(message: dict) -> None:
        kind = message.pop("kind")
        if kind == "step" and on_step is not None:
            on_step(StepReport(**message))
        elif kind == "validation" and on_validation is not None:
            on_validation(ValidationReport(**message))
        elif kind == "rank":
            log.info("training rank %s of %s: pid %s on %s", message["rank"], message["world"], message["pid"],
                     message["device"])

    launch_ranks(nproc, home, ["--taskset", taskset, "--algorithm", algorithm], settings, on_report=relay)


def _prepare(home: Home, taskset: str, algorithm: str, settings: PipelineSettings, warm_start: dict | None = None):
    """(task set, run identity, model folder) of a training run; a warm start's identity names its
    parent and its steps (``medmeta.training.warm``)."""
    from medmeta.tasksets.store import load_taskset

    tasks = load_taskset(home, taskset)
    train = settings.train if warm_start is None else {**settings.train, "steps": int(warm_start["steps"])}
    identity = run_identity(tasks.manifest, model_spec(tasks.manifest, algorithm, train), train)
    if warm_start is not None:
        identity["warm_start"] = dict(warm_start)
    return tasks, identity, model_dir(home, model_name(identity))


def train_in_process(home: Home, taskset: str, algorithm: str, settings: PipelineSettings,
                     on_step: Callable | None = None, on_validation: Callable | None = None,
                     device: str | None = None, warm_start: dict | None = None,
                     init_weights: dict | None = None) -> dict:
    """Train in this process: alone, or as one torchrun rank (a process group initialised), in
    which case only rank 0 writes (spec, checkpoints, weights, curve, result.json).

    ``warm_start`` (``{"parent": ref, "parent_weights_sha256": ..., "steps": N}``) with
    ``init_weights`` (the parent's state dict): start from those weights, for N steps instead of
    ``train.steps``; the model's identity, hence its name, includes both."""
    from metalearn import distributed
    from metalearn.checkpoint import save_weights
    from metalearn.trainer import Trainer

    writes = distributed.world().writes
    if (warm_start is None) != (init_weights is None):
        raise MedmetaError("a warm start needs both its description and the parent's weights")
    tasks, identity, folder = _prepare(home, taskset, algorithm, settings, warm_start)
    manifest, train = tasks.manifest, identity["train"] | {"device": settings.train["device"]}
    name = model_name(identity)
    if (folder / "result.json").is_file():
        return {**read_json(folder / "result.json", "training result"), "cached": True}
    if writes:
        write_json(folder / "spec.json", identity)
    for split in ("train", "val"):
        if split not in tasks.splits:
            raise MedmetaError(f"task set {taskset} has no {split} split")
    seed = int(train["seed"])
    shots = int(manifest["shots"])
    sampler = split_sampler(tasks.splits["train"], manifest, shots=shots, tasks=int(train["meta_batch"]), seed=seed)
    val = split_sampler(tasks.splits["val"], manifest, shots=shots, tasks=1, seed=seed + 1)
    import torch

    torch.manual_seed(seed)  # the initial weights too: the same inputs give the same model
    learner = build_learner(identity["spec"])
    if init_weights is not None:
        learner.load_state_dict(init_weights)
    trainer = Trainer(
        learner, sampler.sample, max_steps=int(train["steps"]), lr=float(train["lr"]),
        val_episodes=list(val.evaluation(int(train["val_episodes"]), batch=int(train["val_episodes"]))),
        val_every=int(train["val_every"]), patience=train["patience"], checkpoint_dir=folder / "checkpoint",
        checkpoint_every=int(train["checkpoint_every"]), seed=seed, device=device or str(train["device"]),
        config=identity, on_step=on_step, on_validation=on_validation,
    )
    delay = float(os.environ.get("MEDMETA_TEST_STEP_DELAY_S") or 0)  # tests only: a window to kill a run in
    if delay:
        report_step = trainer.on_step

        def slowed(report):
            time.sleep(delay)
            if report_step is not None:
                report_step(report)

        trainer.on_step = slowed
    started = time.perf_counter()
    result = trainer.fit(resume=True)
    summary = {
        "model": name, "taskset": taskset, "algorithm": algorithm, "snapshot": manifest["snapshot"],
        "steps": result.steps, "stop_reason": result.stop_reason, "monitor": result.monitor,
        "best_value": result.best_value, "best_step": result.best_step, "device": result.device,
        "seconds": round(time.perf_counter() - started, 3), "history": result.history,
        "validations": result.validations, "spec": identity["spec"], "train": identity["train"],
        "processes": trainer.world.size,
    }
    if warm_start is not None:
        summary["warm_start"] = identity["warm_start"]
    if not writes:
        return {**summary, "cached": False}
    save_weights(folder / "weights.safetensors", learner, metadata={"model": name})
    from medmeta.training.plots import training_curve

    training_curve(summary, folder / "curve.png", home=home)
    write_json(folder / "result.json", summary)
    return {**summary, "cached": False}
