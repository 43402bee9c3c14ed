"""The pipeline: ingest and validate, build task sets, then per task set and algorithm train,
evaluate and publish; every stage a subflow, visible in the Prefect UI.

A snapshot that fails a critical validation stops the pipeline before any training: the run
ends Failed with the failed expectations in its message, and nothing is published. Unchanged
inputs are not reprocessed: ingest is incremental, a model trained on the same task set with
the same settings is found instead of trained again, an evaluation with the same settings is
reused, and a model already published on the same evaluation is not published twice. With
``publish.adapt``, each task set's champion is then adapted to its rare classes (flows/adapt.py);
an adapted version of the same parent and support cases is found, not published again. One
pipeline trains at a time (a global concurrency limit of one slot); a second waits its turn.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect.states import Completed, Failed

from flows import run_names
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
from medmeta.training.report import headline
from tasks.concurrency import training_slot
from tasks.pipeline import record_pipeline_run, report_pipeline


@landing_flow("landing", name="pipeline", persist_result=False, validate_parameters=True, flow_run_name=run_names.dated("pipeline"))
def pipeline_flow(landing: str | None = None, home: str | None = None, settings: Settings | None = None,
                  rules: str | None = None):
    """Landing data to published few-shot models; returns the run summary (in a Completed or Failed state).

    ``landing``: the landing folder's path in process, its landing token from Prefect (a deployment
    gives the token; Prefect never holds the path: flows/landing_flow.py); None for the one folder
    in ``$MEDMETA_LANDINGS``. ``rules``: a validation rules file replacing the defaults per table
    (validation/rules.yaml; None: the settings' ``validation.rules``). ``settings``: medmeta's settings
    (medmeta/settings.py), read where the command or deployment started; None is the defaults. The
    summary names quarantined files by their path tokens only.
    """
    settings = settings or load_settings()
    the_home = Home.at(home)
    root = str(the_home.root)
    started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    ingest = ingest_flow(landing, root, settings, rules=rules)
    summary: dict = {"started": started, "ingest": {k: ingest[k] for k in (
        "snapshot", "files_seen", "files_ingested", "files_unchanged", "files_quarantined", "quarantined",
        "rows_quarantined", "patients", "records", "images")}, "validation": ingest["validation"], "tasksets": [], "models": [], "adapted": [],
        "compound_models": []}
    if not ingest["validation"]["success"]:
        failed = ", ".join(ingest["validation"]["critical_failures"])
        summary["status"] = "validation_failed"
        summary = record_pipeline_run(the_home, summary)  # with stage durations, champion and challenger
        report_pipeline(summary, the_home)
        return Failed(message=f"snapshot {ingest['snapshot']} failed validation (critical: {failed}); "
                              "nothing was trained or published", data=summary)
    for entry in settings.tasksets:
        built = build_tasksets_flow(by=entry["by"], inputs=entry.get("inputs"), ways=entry.get("ways"),
                                    shots=entry.get("shots"), queries=entry.get("queries"),
                                    seed=int(entry.get("seed", 0)), name=entry.get("name"), home=root,
                                    **{k: entry[k] for k in TASKSET_OPTIONS if k in entry})
        summary["tasksets"].append(built)
        if entry["by"] == "target":  # compounds: ActivityGP against the field's baselines, the best published
            with training_slot():
                summary["compound_models"].append(compounds_flow(built["name"], root, settings))
            continue
        for algorithm in settings.train["algorithms"]:
            with training_slot():
                trained = train_flow(built["name"], algorithm, root, settings)
                evaluation = evaluate_flow(trained["model"], root, settings)
                published = publish_flow(trained["model"], root, settings)
            summary["models"].append({"model": trained["model"], "algorithm": algorithm, "taskset": built["name"],
                                      "trained": not trained["cached"], "steps": trained["steps"],
                                      "device": trained["device"], "evaluation": _headline(evaluation),
                                      "published": published})
        if settings.publish["adapt"]:  # the champion adapted to each class left out of meta-training
            summary["adapted"] += adapt_flow(root, settings, built["name"])["adapted"]
    summary["status"] = "completed"
    summary = record_pipeline_run(the_home, summary)  # with stage durations, champion and challenger
    report_pipeline(summary, the_home)
    return Completed(message=f"{len(summary['models'])} models", data=summary)


def _headline(evaluation: dict) -> list[dict]:
    return headline(evaluation)  # each method with its interval, and the paired differences
