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


@task(name="evaluate-activity-model", **NO_RESULTS)
def evaluate_activity_task(home: Home, model: str, settings: Settings) -> list[dict]:
    """The meta-learner and the baselines on the test tasks, the same draws; a table artifact and log lines."""
    from medmeta.chem.publish import evaluate_activity_model
    from medmeta.chem.report import LEARNER, activity_headline, difference_text, estimate_text

    evaluation = evaluate_activity_model(home, model, settings)
    headline = activity_headline(evaluation)
    rows = [{"support": e["support"], "method": method, "dAUPRC [95%]": estimate_text(v),
             "meta-learner minus it": "" if method == LEARNER else difference_text(e, method)}
            for e in headline for method, v in e["methods"].items()]
    create_table_artifact(key=artifact_key("medmeta-activity-evaluation", evaluation.taskset), table=rows,
                          description=f"dAUPRC of {model} and the baselines on {len(evaluation.result.units)} test "
                                      f"tasks, {evaluation.result.n_draws} draws each, 95% intervals")
    logger = get_run_logger()
    for e in headline:
        logger.info("S=%d: %s", e["support"], "; ".join(f"{m} {estimate_text(v)}" for m, v in e["methods"].items()))
    for item in evaluation.excluded:
        logger.warning("test task %s not evaluated: %s", item["task"], item["reason"])
    return headline


@task(name="publish-activity-model", **NO_RESULTS)
def publish_activity_task(home: Home, model: str, settings: Settings) -> dict:
    """The best method at the gate's support size as the task set's registry model; its card as an artifact."""
    from medmeta.chem.publish import publish_activity_model

    published = publish_activity_model(home, model, settings)
    create_markdown_artifact(key=artifact_key("medmeta-model-card", published["name"]),
                             markdown=Path(published["card"]).read_text(),
                             description=f"Model card of {published['ref']} ({published['decision']})")
    what = "the meta-learner" if not published["baseline"] else f"the baseline {published['published']}"
    get_run_logger().info("published %s: %s, %s (%s)", published["ref"], what, published["decision"], published["reason"])
    return published
