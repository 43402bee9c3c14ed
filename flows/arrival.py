"""The arrival fast path: what the on-new-cases deployment runs when ``medmeta.cases.arrived`` fires.

1. ingest and validate the landing folder (incremental: only the new files are read), then rebuild
   each task set of the settings;
2. first, before any training: each class of a task set's adaptation split that its champion never
   meta-trained on gets the champion adapted to it and published at once (flows/adapt.py's work,
   for those classes only);
3. then, when known classes (the meta-learning splits) got new cases: a warm start of the champion
   from its published weights for ``arrival.warm_steps`` steps (medmeta/training/warm.py),
   evaluated on the task set's fixed meta-test episodes and published through the champion gate.

The nightly deployment keeps the full pipeline (flows/pipeline.py: every algorithm from scratch).
A task set without a champion yet (a new home) gets its first models as the pipeline trains them.
Nothing new (the same task set before and after) adapts nothing new and warm-starts nothing. The
run summary, with each stage's duration, is written to ``H/runs/arrival-<started>.json``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect.states import Completed, Failed

from flows.adapt import adapt_flow
from flows.compounds import compounds_flow
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.landing_flow import landing_flow
from flows.publish import publish_flow
from flows.tasksets import build_tasksets_flow
from flows.train import train_flow
from medmeta.home import Home
from medmeta.tasksets.spec import TASKSET_OPTIONS
from medmeta.settings import Settings, load_settings
from flows import run_names
from medmeta.training.report import headline
from tasks.arrival import adapt_new_classes, compare_arrival, manifest_before, taskset_name, warm_start_task
from tasks.concurrency import training_slot
from tasks.pipeline import record_pipeline_run, report_pipeline
from tasks.training import evaluate_model_task, publish_model_task

INGEST_KEYS = ("snapshot", "files_seen", "files_ingested", "files_unchanged", "files_quarantined", "quarantined",
               "rows_quarantined", "patients", "records", "images")


class _Clock:
    """Seconds per stage (summed when a stage runs once per task set) and since the flow started."""

    def __init__(self):
        self.start = time.perf_counter()
        self.durations: dict[str, float] = {}

    def stage(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.durations[name] = round(self.durations.get(name, 0.0) + now - since, 3)
        return now

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.start, 3)


@landing_flow("landing", name="arrival", flow_run_name=run_names.dated("arrival"), persist_result=False, validate_parameters=True)
def arrival_flow(landing: str | None = None, home: str | None = None, settings: Settings | None = None,
                 rules: str | None = None):
    """New cases to adapted models at once, and a warm-started candidate; returns the run summary
    (in a Completed or Failed state). Parameters as ``pipeline_flow``'s: ``landing`` is the landing
    folder's path in process, its landing token from Prefect (flows/landing_flow.py); ``settings``:
    medmeta's settings (medmeta/settings.py; None: the defaults), read where the command started."""
    settings = settings or load_settings()
    the_home = Home.at(home)
    root = str(the_home.root)
    clock = _Clock()
    summary: dict = {"kind": "arrival", "started": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"),
                     "tasksets": [], "adapted": [], "warm_starts": [], "models": [], "compound_models": [],
                     "durations_s": clock.durations}
    entries = [(taskset_name(entry), entry) for entry in settings.tasksets]
    before = {name: manifest_before(the_home, name) for name, _ in entries}
    mark = clock.start
    ingest = ingest_flow(landing, root, settings, rules=rules)
    mark = clock.stage("ingest_and_validate", mark)
    summary["ingest"] = {k: ingest[k] for k in INGEST_KEYS}
    summary["validation"] = ingest["validation"]
    if not ingest["validation"]["success"]:
        summary["status"] = "validation_failed"
        summary = _finish(the_home, summary, clock)
        return Failed(message=f"snapshot {ingest['snapshot']} failed validation (critical: "
                              f"{', '.join(ingest['validation']['critical_failures'])}); nothing was adapted or trained",
                      data=summary)
    warm_due = []
    for name, entry in entries:
        build_tasksets_flow(by=entry["by"], inputs=entry.get("inputs"), ways=entry.get("ways"),
                            shots=entry.get("shots"), queries=entry.get("queries"), seed=int(entry.get("seed", 0)),
                            name=entry.get("name"), home=root, **{k: entry[k] for k in TASKSET_OPTIONS if k in entry})
        if entry["by"] == "target":  # compounds: no classes to adapt to; the compounds flow (found when unchanged)
            mark = clock.stage("tasksets", mark)
            with training_slot():
                summary["compound_models"].append(compounds_flow(name, root, settings))
            mark = clock.stage("compounds", mark)
            continue
        changes = compare_arrival(the_home, before[name], name)
        summary["tasksets"].append(changes)
        mark = clock.stage("tasksets", mark)
        if changes["new_classes"]:
            adapted = adapt_new_classes(the_home, name, changes["new_classes"])
            summary["adapted"] += adapted
            if any("ref" in a and not a["cached"] for a in adapted):
                summary["adapted_published_after_s"] = clock.elapsed()
            mark = clock.stage("adapt", mark)
        if changes["champion"] is None:  # nothing to adapt or warm-start: the first models, as the pipeline does
            summary["models"] += _first_models(name, settings, root)
            mark = clock.stage("first_models", mark)
        elif changes["grown_classes"]:
            warm_due.append(name)
    for name in warm_due:
        summary["warm_starts"].append(_warm_start(the_home, name, settings, clock))
    summary["status"] = "completed"
    summary = _finish(the_home, summary, clock)
    published = sum(1 for a in summary["adapted"] if "ref" in a and not a["cached"])
    return Completed(message=f"{published} adapted model(s) published, {len(summary['warm_starts'])} warm start(s)",
                     data=summary)


def _first_models(taskset: str, settings: Settings, root: str) -> list[dict]:
    """A task set without a champion (a new home): train, evaluate and publish each algorithm from
    scratch, then adapt, as flows/pipeline.py does; entries as the pipeline's summary has them."""
    models = []
    for algorithm in settings.train["algorithms"]:
        with training_slot():
            trained = train_flow(taskset, algorithm, root, settings)
            evaluation = evaluate_flow(trained["model"], root, settings)
            published = publish_flow(trained["model"], root, settings)
        models.append({"model": trained["model"], "algorithm": algorithm, "taskset": taskset,
                       "trained": not trained["cached"], "steps": trained["steps"], "device": trained["device"],
                       "evaluation": headline(evaluation), "published": published})
    if settings.publish["adapt"]:
        adapt_flow(root, settings, taskset)
    return models


def _warm_start(home: Home, taskset: str, settings: Settings, clock: _Clock) -> dict:
    """Warm start, evaluate and publish through the gate; one summary entry."""
    mark = time.perf_counter()
    with training_slot():
        trained = warm_start_task(home, taskset, settings)
        mark = clock.stage("warm_start", mark)
        if "skipped" in trained:
            return trained
        evaluation = evaluate_model_task(home, trained["model"], settings)
        mark = clock.stage("evaluate", mark)
        published = publish_model_task(home, trained["model"], settings)
        clock.stage("publish", mark)
    return {"taskset": taskset, "model": trained["model"], "algorithm": evaluation["algorithm"],
            "parent": trained["warm_start"]["parent"], "steps": trained["steps"], "trained": not trained["cached"],
            "device": trained["device"], "seconds": trained["seconds"], "evaluation": headline(evaluation),
            "published": published, "published_after_s": clock.elapsed()}


def _finish(home: Home, summary: dict, clock: _Clock) -> dict:
    """The run summary, as the pipeline's (tasks/pipeline.py: registry aliases and stage durations
    read back, ``H/runs/arrival-STARTED.json``, the summary artifact and log lines); returned as
    recorded, so the flow's result holds the aliases too."""
    summary["durations_s"]["total"] = clock.elapsed()
    recorded = record_pipeline_run(home, summary)
    report_pipeline(recorded, home)
    return recorded
