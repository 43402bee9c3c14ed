"""Prefect tasks of compound-activity models (target task sets): train, evaluate against the baselines,
publish the best method. Coarse: one task per model and stage; the work is medmeta.chem's."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from medmeta.home import Home
from medmeta.settings import Settings
from tasks.options import NO_RESULTS
from tasks.training import artifact_key


@task(name="train-activity-model", retries=1, **NO_RESULTS)
def train_activity_task(home: Home, taskset: str, settings: Settings) -> dict:
    """Meta-train (resume, or find) the task set's ActivityGP; a log line per checkpoint."""
    from medmeta.chem.training import train_activity_model

    logger = get_run_logger()
    steps = int(settings.compounds["steps"])
    trained = train_activity_model(home, taskset, settings,
                                   on_checkpoint=lambda step: logger.info("meta-training %s: step %d/%d", taskset, step, steps))
    logger.info("%s %s: %d steps on %s in %.1f s", "found" if trained.cached else "trained", trained.model,
                trained.steps, trained.device, trained.seconds)
    return {"model": trained.model, "taskset": taskset, "cached": trained.cached, "steps": trained.steps,
            "seconds": trained.seconds, "device": trained.device}


@task(name="train-episodic-compound-model", retries=1, **NO_RESULTS)
def train_episodic_task(home: Home, taskset: str, algorithm: str, settings: Settings) -> dict:
    """Meta-train (resume, or find) one of metalearn's episodic learners on the task set's compounds
    (``train.backbone.compounds``); a log line per checkpoint."""
    from medmeta.chem.episodic import train_episodic_model

    logger = get_run_logger()
    steps = int(settings.compounds["episodic"]["steps"])
    trained = train_episodic_model(home, taskset, algorithm, settings, on_checkpoint=lambda step: logger.info(
        "meta-training %s on %s: step %d/%d", algorithm, taskset, step, steps))
    logger.info("%s %s: %d steps on %s in %.1f s", "found" if trained.cached else "trained", trained.model,
                trained.steps, trained.device, trained.seconds)
    return {"model": trained.model, "taskset": taskset, "algorithm": algorithm, "cached": trained.cached,
            "steps": trained.steps, "seconds": trained.seconds, "device": trained.device}


@task(name="evaluate-activity-model", **NO_RESULTS)
def evaluate_activity_task(home: Home, models: list[str], settings: Settings) -> list[dict]:
    """Every trained model and the baselines on the test tasks, the same draws; a table artifact and log lines."""
    from medmeta.chem.publish import evaluate_compound_models
    from medmeta.chem.report import activity_headline, difference_text, estimate_text

    evaluation = evaluate_compound_models(home, models, settings)
    headline = activity_headline(evaluation)
    learners = evaluation.learners
    rows = [{"support": e["support"], "method": method, "kind": "meta-learner" if method in learners else "baseline",
             "dAUPRC [95%]": estimate_text(v),
             "each meta-learner minus it": "" if method in learners else
             "; ".join(f"{learner} {difference_text(e, method, learner)}" for learner in learners)}
            for e in headline for method, v in e["methods"].items()]
    create_table_artifact(key=artifact_key("medmeta-activity-evaluation", evaluation.taskset), table=rows,
                          description=f"dAUPRC of {', '.join(models)} and the baselines on "
                                      f"{len(evaluation.result.units)} test tasks, {evaluation.result.n_draws} draws "
                                      "each, 95% intervals")
    logger = get_run_logger()
    for e in headline:
        logger.info("S=%d: %s", e["support"], "; ".join(f"{m} {estimate_text(v)}" for m, v in e["methods"].items()))
    for item in evaluation.excluded:
        logger.warning("test task %s not evaluated: %s", item["task"], item["reason"])
    return headline


@task(name="publish-activity-model", **NO_RESULTS)
def publish_activity_task(home: Home, models: list[str], settings: Settings) -> dict:
    """The best method at the gate's support size as the task set's registry model; its card as an artifact."""
    from medmeta.chem.publish import publish_compound_models

    published = publish_compound_models(home, models, settings)
    create_markdown_artifact(key=artifact_key("medmeta-model-card", published["name"]),
                             markdown=Path(published["card"]).read_text(),
                             description=f"Model card of {published['ref']} ({published['decision']})")
    what = (f"the meta-learner {published['published']}" if not published["baseline"]
            else f"the baseline {published['published']}")
    get_run_logger().info("published %s: %s, %s (%s)", published["ref"], what, published["decision"], published["reason"])
    return published
