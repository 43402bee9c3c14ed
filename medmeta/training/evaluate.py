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

The baselines fit many episodes at once (``metalearn.stacked``: each episode's network drawn from
its own seed, fitted side by side; the numbers of fitting each alone). ``on_progress`` receives an
``EvaluationProgress`` each tenth of every method's episodes (and once per method whose scores are
cached); under torchrun rank 0 sends it through ``medmeta.training.ranked.report`` and the launcher
hands it on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

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


# How the baselines' scores are computed, part of their cache key: per-episode seeds; "stacked": MLP
# fits and fine-tune heads stacked across episodes (metalearn/stacked.py), equal to the one-at-a-time
# fits in float64 but rounded differently in float32, where an argmax or an early stop can flip now
# and then, so scores cached by the one-at-a-time code are not mixed with these.
SEEDING = "per-episode, stacked"
METHODS = ("from_scratch", "pretrain_finetune", "meta")  # the order each shot count's methods are scored in


@dataclass(frozen=True)
class EvaluationProgress:
    """Where an evaluation is: ``method`` (from_scratch, pretrain_finetune or meta) at ``shots`` has
    ``done`` of ``total`` episodes scored (across ranks: rank 0's share, scaled); ``part`` of ``parts``
    is this (shots, method) among all of them, in order; ``cached``: scores found, not computed."""

    model: str
    shots: int
    method: str
    done: int
    total: int
    part: int
    parts: int
    elapsed_s: float
    cached: bool = False

    @property
    def fraction(self) -> float:
        """The whole evaluation's progress in [0, 1], each (shots, method) an equal part."""
        return min(1.0, (self.part + (self.done / self.total if self.total else 1.0)) / self.parts)

    def line(self) -> str:
        what = "cached scores" if self.cached else f"{self.done}/{self.total} episodes"
        return (f"evaluation of {self.model}: {self.method} at {self.shots} shots, {what} "
                f"({100 * self.fraction:.0f}% of the evaluation, {self.elapsed_s:.1f} s elapsed)")


ProgressCallback = Callable[[EvaluationProgress], None]


class _Tenths:
    """Calls ``on_progress`` when a method's episodes cross each tenth of their total (and at the end)."""

    def __init__(self, on_progress: ProgressCallback | None, model: str, parts: int):
        self.on_progress, self.model, self.parts = on_progress, model, parts
        self.started = time.perf_counter()
        self.part, self.shots, self.last = -1, 0, {}

    def start(self, shots: int) -> None:
        self.shots = shots

    def cached(self, method: str, total: int) -> None:
        self.part += 1
        self._send(method, total, total, cached=True)

    def method(self, method: str) -> None:
        self.part += 1
        self.last[(self.shots, method)] = 0

    def __call__(self, method: str, done: int, total: int) -> None:
        if (self.shots, method) not in self.last:  # the next method of compare's table
            self.method(method)
        tenth = 10 * done // total if total else 10
        if tenth > self.last[(self.shots, method)]:
            self.last[(self.shots, method)] = tenth
            self._send(method, done, total)

    def _send(self, method: str, done: int, total: int, cached: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(EvaluationProgress(self.model, self.shots, method, done, total, self.part, self.parts,
                                                round(time.perf_counter() - self.started, 3), cached))


def baseline_scores(home: Home, eval_id: str, spec: dict, ev: dict, baselines: dict, test: list,
                    seed: int, progress: "_Tenths | None" = None) -> dict[str, list[float]]:
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
            if progress is not None:
                for method, values in cached["per_episode"].items():
                    progress.cached(method, len(values))
            return cached["per_episode"]
    w = distributed.world()
    per_episode = compare(baselines, test, seed=seed, split_across_ranks=w.distributed,
                          on_progress=progress)["per_episode"]
    if w.writes:
        write_json(path, {"setup": setup, "per_episode": per_episode})
    return per_episode


def load_learner(folder, spec: dict):
    from metalearn.checkpoint import load_weights

    learner = build_learner(spec)
    load_weights(folder / "weights.safetensors", learner)
    learner.eval()
    return learner


def evaluate_model(home: Home, name: str, settings: PipelineSettings, nproc: int | None = None,
                   on_progress: ProgressCallback | None = None) -> dict:
    """Evaluate model ``name`` (or find it evaluated with these settings); returns evaluation.json.

    ``nproc`` (None: the settings' ``train.nproc``, which ``MEDMETA_TRAIN_NPROC`` overrides:
    the world size training uses) evaluation processes: above 1, torchrun ranks each score a share
    of the episodes while this process waits (``RankFailed`` names a rank that dies; nothing is
    then written but the baselines' scores of shot counts already done). The numbers do not depend on
    ``nproc``. The ranks evaluate on CPU, as one process does, so ``nproc`` is at most the CPU cores.
    ``on_progress``: an ``EvaluationProgress`` each tenth of every method's episodes (rank 0's, relayed).
    """
    from medmeta.training.ranked import check_nproc

    nproc = check_nproc(int(settings.train["nproc"]) if nproc is None else nproc, "cpu", job="evaluation")
    folder = require_model(home, name)
    done = _evaluated(folder, settings.evaluate)
    if done is not None:
        return {**done, "cached": True}
    if nproc == 1:
        return evaluate_in_process(home, name, settings, on_progress=on_progress)
    _launch(home, name, settings, nproc, on_progress)
    return {**read_json(folder / "evaluation.json", "evaluation"), "cached": False}


def _evaluated(folder: Path, ev: dict) -> dict | None:
    if (folder / "evaluation.json").is_file():
        done = read_json(folder / "evaluation.json", "evaluation")
        if done.get("settings") == ev:
            return done
    return None


def _launch(home: Home, name: str, settings: PipelineSettings, nproc: int,
            on_progress: ProgressCallback | None = None) -> None:
    import logging

    from medmeta.training.ranked import launch_ranks

    log = logging.getLogger("medmeta.training")

    def relay(message: dict) -> None:
        if message.get("kind") == "rank":
            log.info("evaluation rank %s of %s: pid %s", message["rank"], message["world"], message["pid"])
        elif message.get("kind") == "progress" and on_progress is not None:
            on_progress(EvaluationProgress(**{k: message[k] for k in EvaluationProgress.__dataclass_fields__}))

    launch_ranks(nproc, home, ["--evaluate", name], settings, on_report=relay, job="evaluation")


def report_progress(progress: EvaluationProgress) -> None:
    """Send ``progress`` to the launcher (a torchrun rank's stdout report line)."""
    from medmeta.training.ranked import report

    report("progress", **asdict(progress))


def evaluate_in_process(home: Home, name: str, settings: PipelineSettings,
                        on_progress: ProgressCallback | None = None) -> dict:
    """Evaluate in this process: alone, or as one torchrun rank (a process group initialised), in
    which case each method scores this rank's share of the episodes, every rank gets all the
    scores, and only rank 0 writes (baselines' cache, evaluation.png, evaluation.json).
    ``on_progress``: see ``evaluate_model`` (the ranks other than 0 pass None)."""
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
    progress = _Tenths(on_progress, name, len(ev["shots"]) * len(METHODS))
    by_shots = []
    for shots in ev["shots"]:
        progress.start(int(shots))
        eval_id = evaluation_id(identity["taskset"]["digest"], seed, episodes, int(shots),
                                int(tasks.manifest["queries"]))
        test = test_episodes(tasks, int(shots), episodes, seed)
        known = baseline_scores(home, eval_id, spec, ev, baselines, test, seed, progress)
        table = compare({"meta": learner, **known}, test, reference="meta", seed=seed,
                        split_across_ranks=w.distributed, on_progress=progress)
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
