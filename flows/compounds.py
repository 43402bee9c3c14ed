"""The compound-activity flow: a target task set's models trained (``compounds.algorithms``: ActivityGP and/or
metalearn's episodic learners on ``train.backbone.compounds``), evaluated together against the baselines
medicinal chemists trust on the same draws, and the best method published (the baseline itself when it wins)."""

from __future__ import annotations

from prefect import flow

from medmeta.home import Home
from medmeta.settings import Settings, load_settings
from tasks.compounds import evaluate_activity_task, publish_activity_task, train_activity_task, train_episodic_task


@flow(name="compounds", persist_result=False, flow_run_name="compounds-{taskset}")
def compounds_flow(taskset: str, home: str | None = None, settings: Settings | None = None) -> dict:
    """Train each of ``compounds.algorithms``, evaluate them and the baselines, publish the best, on target task set
    ``taskset``; the pipeline summary's entry for it (``model``, ``steps``, ``device``: the first algorithm's;
    ``models``: each algorithm's). ``settings``: medmeta's settings; None is the defaults."""
    settings = settings or load_settings()
    the_home = Home.at(home)
    trained = []
    for algorithm in settings.compounds["algorithms"]:
        if algorithm == "activity_gp":
            trained.append({**train_activity_task(the_home, taskset, settings), "algorithm": algorithm})
        else:
            trained.append(train_episodic_task(the_home, taskset, algorithm, settings))
    models = [t["model"] for t in trained]
    evaluation = evaluate_activity_task(the_home, models, settings)
    published = publish_activity_task(the_home, models, settings)
    first = trained[0]
    return {"model": first["model"], "algorithm": first["algorithm"], "taskset": taskset,
            "models": {t["algorithm"]: {"model": t["model"], "trained": not t["cached"], "steps": t["steps"],
                                        "seconds": t["seconds"], "device": t["device"]} for t in trained},
            "trained": any(not t["cached"] for t in trained), "steps": first["steps"], "device": first["device"],
            "evaluation": evaluation, "gate_support": int(settings.compounds["gate_support_size"]),
            "published": published}
