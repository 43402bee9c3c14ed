"""Evaluate a trained model on held-out meta-test tasks, next to the two baselines.

For each shot count in the settings: ``episodes`` meta-test episodes (fixed by the task set's
seed, so every model of a task set is scored on the same ones), scored for the meta-learner,
a network trained from scratch on each support set, and a network pretrained on all meta-train
data then fine-tuned on each support set; mean accuracy with a 95% interval each, and the
paired difference to each baseline.

Every method scores each episode with the torch RNG seeded from (the model's seed, the episode's
index) (``metalearn.evaluation.episode_seed``), so the scores do not depend on how the episodes
are shared out: with ``nproc`` above 1, torchrun ranks (``medmeta.training.ranked``, gloo; on CPU
like one process) each score a contiguous share of the episodes for the meta-learner and both
baselines, the per-episode scores are gathered in episode order, and rank 0 alone writes the
baselines' cache, evaluation.png and evaluation.json (atomically, last), which holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.models import backbone_factory, build_learner
from medmeta.training.runs import read_json, require_model, write_json
from medmeta.training.settings import PipelineSettings
from medmeta.training.train import split_sampler

EVAL_BATCH = 50  # episodes gathered at a time
BASELINE_KEYS = ("baseline_steps", "baseline_lr", "baseline_stop_loss", "pretrain_steps")


def evaluation_id(manifest_digest: str, seed: int, episodes: int, shots: int, queries: int) -> str:
    from medmeta.registry import evaluation_id as registry_id
    from metalearn.sampler import SCHEME

    return registry_id(manifest_digest, seed, episodes, shots=shots, queries=queries, sampler=SCHEME)


def test_episodes(tasks, shots: int, episodes: int, seed: int) -> list:
    """The fixed meta-test episodes of a task set at ``shots``."""
    if "test" not in tasks.splits:
        raise MedmetaError(f"task set {tasks.manifest['name']} has no test split")
    sampler = split_sampler(tasks.splits["test"], tasks.manifest, shots=shots, tasks=1, seed=seed)
    return list(sampler.evaluation(episodes, batch=EVAL_BATCH))


SEEDING = "per-episode"  # how the baselines' random numbers are drawn: part of their cache key


def baseline_scores(home: Home, eval_id: str, spec: dict, ev: dict, baselines: dict, test: list,
                    seed: int) -> dict[str, list[float]]:
    """The baselines' score per meta-test episode, computed once per evaluation and baseline setup.

    They depend on the episodes (``eval_id``), the backbone, the baseline settings and the
    seed, not on the meta-learner, so every model of a task set shares them (the from-scratch
    baseline is most of an evaluation's time). Under torchrun each rank scores its share of the
    episodes and every rank gets them all; rank 0 alone writes the cache.
    """
    from metalearn import distributed
    from metalearn.evaluation import compare

    setup = {"evaluation_id": eval_id, "backbone": spec["backbone"], "n_way": spec["n_way"], "seed": seed,
             "settings": {k: ev[k] for k in BASELINE_KEYS}, "seeding": SEEDING}
    key = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16]
    path = home.training / "baselines" / f"{key}.json"
    if path.is_file():  # every rank sees the same answer: rank 0 writes only after the ranks gathered
        cached = read_json(path, "baseline scores")
        if cached.get("setup") == setup:
            return cached["per_episode"]
    w = distributed.world()
    per_episode = compare(baselines, test, seed=seed, split_across_ranks=w.distributed)["per_episode"]
    if w.writes:
        write_json(path, {"setup": setup, "per_episode": per_episode})
    return per_episode


def load_learner(folder, spec: dict):
    from metalearn.checkpoint import load_weights

    learner = build_learner(spec)
    load_weights(folder / "weights.safetensors", learner)
    learner.eval()
    return learner


def evaluate_model(home: Home, name: str, settings: PipelineSettings, nproc: int | None = None) -> dict:
    """Evaluate model ``name`` (or find it evaluated with these settings); returns evaluation.json.

    ``nproc`` (None: the settings' ``train.nproc``, which ``MEDMETA_TRAIN_NPROC`` overrides:
    the world size training uses) evaluation processes: above 1, torchrun ranks each score a share
    of the episodes while this process waits (``RankFailed`` names a rank that dies; nothing is
    then written but the baselines' scores of shot counts already done). The numbers do not depend on
    ``nproc``. The ranks evaluate on CPU, as one process does, so ``nproc`` is at most the CPU cores.
    """
    from medmeta.training.ranked import check_nproc

    nproc = check_nproc(int(settings.train["nproc"]) if nproc is None else nproc, "cpu", job="evaluation")
    folder = require_model(home, name)
    done = _evaluated(folder, settings.evaluate)
    if done is not None:
        return {**done, "cached": True}
    if nproc == 1:
        return evaluate_in_process(home, name, settings)
    _launch(home, name, settings, nproc)
    return {**read_json(folder / "evaluation.json", "evaluation"), "cached": False}


def _evaluated(folder: Path, ev: dict) -> dict | None:
    if (folder / "evaluation.json").is_file():
        done = read_json(folder / "evaluation.json", "evaluation")
        if done.get("settings") == ev:
            return done
    return None


def _launch(home: Home, name: str, settings: PipelineSettings, nproc: int) -> None:
    import logging

    from medmeta.training.ranked import launch_ranks

    log = logging.getLogger("medmeta.training")

    def relay(message: dict) -> None:
        if message.get("kind") == "rank":
            log.info("evaluation rank %s of %s: pid %s", message["rank"], message["world"], message["pid"])

    launch_ranks(nproc, home, ["--evaluate", name], settings, on_report=relay, job="evaluation")


def evaluate_in_process(home: Home, name: str, settings: PipelineSettings) -> dict:
    """Evaluate in this process: alone, or as one torchrun rank (a process group initialised), in
    which case each method scores this rank's share of the episodes, every rank gets all the
    scores, and only rank 0 writes (baselines' cache, evaluation.png, evaluation.json)."""
    from medmeta.tasksets.store import load_taskset
    from metalearn import distributed
    from metalearn.baselines import FromScratch, PretrainFineTune
    from metalearn.evaluation import compare

    w = distributed.world()
    folder = require_model(home, name)
    identity = read_json(folder / "spec.json", "model spec")
    spec = identity["spec"]
    ev = settings.evaluate
    done = _evaluated(folder, ev)
    if done is not None:
        return {**done, "cached": True}
    tasks = load_taskset(home, identity["taskset"]["name"])
    if tasks.manifest["snapshot"] != identity["taskset"]["snapshot"]:
        raise MedmetaError(f"task set {identity['taskset']['name']} was rebuilt since {name} was trained")
    seed, episodes = int(identity["train"]["seed"]), int(ev["episodes"])
    learner = load_learner(folder, spec)
    factory = backbone_factory(spec)
    train = tasks.splits["train"]
    pretrained = PretrainFineTune(factory, spec["n_way"], train.inputs, train.labels,
                                  pretrain_steps=int(ev["pretrain_steps"]), finetune_steps=int(ev["baseline_steps"]),
                                  finetune_lr=float(ev["baseline_lr"]), seed=seed,
                                  stop_loss=float(ev["baseline_stop_loss"]))
    baselines = {"from_scratch": FromScratch(factory, spec["n_way"], steps=int(ev["baseline_steps"]),
                                             lr=float(ev["baseline_lr"]), stop_loss=float(ev["baseline_stop_loss"])),
                 "pretrain_finetune": pretrained}
    delay = float(os.environ.get("MEDMETA_TEST_EVALUATION_DELAY_S") or 0)  # tests only: a window to kill a rank in
    if delay and w.distributed:
        time.sleep(delay)
    started = time.perf_counter()
    by_shots = []
    for shots in ev["shots"]:
        eval_id = evaluation_id(identity["taskset"]["digest"], seed, episodes, int(shots),
                                int(tasks.manifest["queries"]))
        test = test_episodes(tasks, int(shots), episodes, seed)
        known = baseline_scores(home, eval_id, spec, ev, baselines, test, seed)
        table = compare({"meta": learner, **known}, test, reference="meta", seed=seed,
                        split_across_ranks=w.distributed)
        by_shots.append({"shots": int(shots), "episodes": table["episodes"], "evaluation_id": eval_id,
                         "rows": table["rows"], "paired": table["paired"], "per_episode": table["per_episode"]})
    evaluation = {"model": name, "algorithm": spec["algorithm"], "taskset": identity["taskset"]["name"],
                  "ways": spec["n_way"], "queries": int(tasks.manifest["queries"]), "metric": "accuracy",
                  "episodes": episodes, "seed": seed, "settings": ev, "by_shots": by_shots,
                  "processes": w.size, "seconds": round(time.perf_counter() - started, 3)}
    if not w.writes:
        return {**evaluation, "cached": False}
    from medmeta.training.plots import accuracy_against_shots

    accuracy_against_shots(evaluation, folder / "evaluation.png", home=home)
    write_json(folder / "evaluation.json", evaluation)  # atomic, and last: its presence means done
    return {**evaluation, "cached": False}


def score_on(learner, tasks, shots: int, episodes: int, seed: int) -> float:
    """Mean accuracy of ``learner`` on the task set's fixed meta-test episodes (the champion check)."""
    from metalearn.evaluation import score

    return score(learner, test_episodes(tasks, shots, episodes, seed)).mean


def evaluation_rows(evaluation: dict) -> list[dict]:
    """One row per shots and method: the table people read."""
    rows = []
    for entry in evaluation["by_shots"]:
        deltas = {p["vs"]: p for p in entry["paired"]}
        for row in entry["rows"]:
            delta = deltas.get(row["method"])
            rows.append({"shots": entry["shots"], "method": row["method"], "accuracy": round(row["mean"], 4),
                         "ci95": f"[{row['low']:.3f}, {row['high']:.3f}]", "episodes": entry["episodes"],
                         "meta minus this": "" if delta is None else
                         f"{delta['mean_difference']:+.3f} ± {delta['ci95']:.3f}"})
    return rows
