"""The compound-activity flow: a target task set's meta-learner trained, evaluated against the baselines
medicinal chemists trust, and the best of them published (the baseline itself when it wins)."""

from __future__ import annotations

from prefect import flow

from medmeta.home import Home
from medmeta.settings import Settings, load_settings
from tasks.compounds import evaluate_activity_task, publish_activity_task, train_activity_task


@flow(name="compounds", persist_result=False, flow_run_name="compounds-{taskset}")
def compounds_flow(taskset: str, home: str | None = None, settings: Settings | None = None) -> dict:
    """Train, evaluate and publish on target task set ``taskset``; the pipeline summary's entry for it.
    ``settings``: medmeta's settings (their ``compounds`` section); None is the defaults."""
    settings = settings or load_settings()
    the_home = Home.at(home)
    trained = train_activity_task(the_home, taskset, settings)
    evaluation = evaluate_activity_task(the_home, trained["model"], settings)
    published = publish_activity_task(the_home, trained["model"], settings)
    return {"model": trained["model"], "algorithm": "activity_gp", "taskset": taskset, "trained": not trained["cached"],
            "steps": trained["steps"], "device": trained["device"], "evaluation": evaluation,
            "gate_support": int(settings.compounds["gate_support_size"]), "published": published}
