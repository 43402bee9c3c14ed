"""Prefect tasks of training, evaluation and publishing: coarse, one per model and stage.

Training reports live progress (a progress artifact) and, once done, its curve as an image
artifact; a retry of a crashed training task resumes from the checkpoint under the home.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact,
                               create_progress_artifact, create_table_artifact, update_progress_artifact)
from prefect.logging import get_run_logger

from medmeta.home import Home
from medmeta.training.settings import PipelineSettings
from tasks.options import NO_RESULTS

PROGRESS_EVERY_S = 2.0


def _png_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def create_png_artifact(path: Path, key: str, title: str, description: str) -> None:
    """A PNG shown as an image in the Prefect UI, offline: a Markdown artifact holding the image
    inline (a ``data:`` URL). Prefect's image artifact would show it too, but prints its whole URL
    as text beneath it; the UI's Markdown renderer draws ``![..](data:...)`` as a bare ``<img>``."""
    create_markdown_artifact(key=key, markdown=png_markdown(path, title), description=description)


def png_markdown(path: Path, title: str) -> str:
    """``title`` (plain words, no brackets) and the PNG at ``path`` inline, as Markdown."""
    alt = title.replace("[", "(").replace("]", ")")
    return f"**{title}**\n\n![{alt}]({_png_url(path)})\n"


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class _LiveProgress:
    """Feeds the trainer's step reports into a Prefect progress artifact (at most every 2 s)."""

    def __init__(self, key: str, description: str):
        self.artifact = create_progress_artifact(progress=0.0, key=key, description=description)
        self.last = 0.0
        self.logger = get_run_logger()

    def on_step(self, report) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or report.step == report.max_steps:
            self.last = now
            update_progress_artifact(self.artifact, progress=100.0 * report.step / report.max_steps)
            accuracy = "" if report.accuracy is None else f", accuracy {report.accuracy:.3f}"
            self.logger.info("step %d/%d: loss %.4f%s", report.step, report.max_steps, report.loss, accuracy)

    def on_validation(self, report) -> None:
        self.logger.info("meta-validation at step %d: %s %.4f (best %.4f at step %d)", report.step, report.monitor,
                         report.value, report.best_value, report.best_step)


@task(name="train-model", retries=1, **NO_RESULTS)
def train_model_task(home: Home, taskset: str, algorithm: str, settings: PipelineSettings,
                     nproc: int | None = None) -> dict:
    """Train one model; with ``nproc`` > 1 (or the settings' ``train.nproc``) torchrun ranks train
    while this task waits, their progress relayed into the same progress artifact."""
    from medmeta.training.train import train_model

    live = _LiveProgress(artifact_key("medmeta-training-progress", taskset, algorithm),
                         f"meta-training {algorithm} on {taskset}")
    result = train_model(home, taskset, algorithm, settings, on_step=live.on_step, on_validation=live.on_validation,
                         nproc=nproc)
    update_progress_artifact(live.artifact, progress=100.0)
    folder = home.training / result["model"]
    create_png_artifact(folder / "curve.png", artifact_key("medmeta-training-curve", taskset, algorithm),
                        f"Training curve of {result['model']}",
                        description=f"Training curve of {result['model']} ({result['steps']} steps, "
                                    f"{result['stop_reason']}, device {result['device']})")
    get_run_logger().info("%s %s: %d steps (%s) on %s x %d in %.1f s", "found" if result["cached"] else "trained",
                          result["model"], result["steps"], result["stop_reason"], result["device"],
                          result.get("processes", 1), result["seconds"])
    return {k: v for k, v in result.items() if k not in ("history", "validations")}


@task(name="evaluate-model", **NO_RESULTS)
def evaluate_model_task(home: Home, model: str, settings: PipelineSettings, nproc: int | None = None) -> dict:
    """Evaluate one model; with ``nproc`` > 1 (or the settings' ``train.nproc``) torchrun ranks
    each score a share of the episodes while this task waits (the same numbers as one process)."""
    from medmeta.training.evaluate import evaluate_model, evaluation_rows

    evaluation = evaluate_model(home, model, settings, nproc=nproc)
    key = artifact_key("medmeta-evaluation", evaluation["taskset"], evaluation["algorithm"])
    create_table_artifact(key=key, table=evaluation_rows(evaluation),
                          description=f"Meta-test accuracy of {model} against the baselines, 95% intervals, "
                                      f"{evaluation['episodes']} episodes per shot count")
    create_png_artifact(home.training / model / "evaluation.png",
                        artifact_key("medmeta-accuracy-vs-shots", evaluation["taskset"], evaluation["algorithm"]),
                        f"Accuracy against shots: {model} and the baselines",
                        description=f"Accuracy against shots: {model} and the baselines")
    return evaluation


@task(name="publish-model", **NO_RESULTS)
def publish_model_task(home: Home, model: str, settings: PipelineSettings) -> dict:
    from medmeta.training.publish import publish_model

    published = publish_model(home, model, settings)
    card_md = Path(published["card"]).read_text()
    create_markdown_artifact(key=artifact_key("medmeta-model-card", published["name"]), markdown=card_md,
                             description=f"Model card of {published['ref']} ({published['decision']})")
    create_link_artifact(key=artifact_key("medmeta-model-link", published["name"]), link=Path(published["card"]).as_uri(),
                         link_text=f"{published['ref']}: model card ({published['decision']})",
                         description=f"The model card of registry version {published['ref']}, beside its weights")
    get_run_logger().info("published %s: %s (%s)", published["ref"], published["decision"], published["reason"])
    return published


@task(name="adapt-models", **NO_RESULTS)
def adapt_models_task(home: Home, taskset: str) -> list[dict]:
    """Adapt the task set's champion to each rare class and publish the adapted versions (medmeta.training.adapt)."""
    from medmeta.training.adapt import adapt_taskset

    adapted = adapt_taskset(home, taskset)
    rows = [{"class": a.get("target", "-"), "model": a.get("ref", a.get("name", "-")),
             "support": ", ".join(f"{c} {n}" for c, n in a.get("support", {}).items()),
             "estimate": a.get("estimate", ""), "alias": a.get("alias") or "",
             "outcome": _adapted_outcome(a)}
            for a in adapted]
    if rows:
        create_table_artifact(key=artifact_key("medmeta-adapted-models", taskset), table=rows,
                              description=f"Adapted models of {taskset}'s champion, one per class left out of "
                                          "meta-training, with each one's leave-one-out estimate")
    logger = get_run_logger()
    for a in adapted:
        logger.info("%s: %s", a.get("target", taskset), _adapted_outcome(a))
    return adapted


def _adapted_outcome(a: dict) -> str:
    """What happened to one adapted model, in words: skipped, retired, found or published (and its alias)."""
    if "skipped" in a:
        return a["skipped"]
    if a.get("decision") == "retired":
        return f"retired: {a.get('reason', '')}" + (" (already)" if a.get("cached") else "")
    done = "already published" if a.get("cached") else f"published, {a.get('decision', '')}"
    return f"{a.get('ref', '')} ({done}{', ' + a['alias'] if a.get('alias') else ''})"
