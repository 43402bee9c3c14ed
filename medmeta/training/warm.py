"""Warm start: meta-train a task set's champion further, from its published weights, for a bounded
number of steps (``arrival.warm_steps``) on the rebuilt task set, when known classes got new cases.

The warm-started model is an ordinary training run (``medmeta.training.train.train_in_process``)
whose identity adds ``warm_start = {"parent": <ref>, "parent_weights_sha256", "steps"}``: its name
is ``<task set>-<algorithm>-warm<steps>-<digest>`` with the digest covering the parent, so it is
never confused with a model trained from scratch, and the same parent and steps find it trained.
It is evaluated on the task set's fixed meta-test episodes and published through the champion gate
like any other (``medmeta.training.evaluate``, ``medmeta.training.publish``); its card says
"warm-started from <ref> for N steps" and carries ``warm_start``.

A champion whose spec differs from what this build and these settings give (other features, another
backbone) cannot start a warm run: the result says why and the nightly run retrains from scratch.
"""

from __future__ import annotations

from typing import Callable

from medmeta.home import Home
from medmeta.training.settings import PipelineSettings


def warm_start_of(champion, steps: int) -> dict:
    """The ``warm_start`` identity of a run started from ``champion`` (a registry version)."""
    return {"parent": champion.ref, "parent_weights_sha256": champion.card["weights"]["sha256"], "steps": int(steps)}


def why_not_warm(champion, manifest: dict, settings: PipelineSettings) -> str | None:
    """Why ``champion`` cannot be warm-started on this task set build, or None when it can."""
    from medmeta.errors import MedmetaError
    from medmeta.training.models import model_spec

    theirs = champion.card.get("config", {}).get("spec")
    if not theirs:
        return f"champion {champion.ref} has no model spec in its card"
    try:
        ours = model_spec(manifest, theirs["algorithm"], settings.train)
    except MedmetaError as error:
        return str(error)
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        return (f"champion {champion.ref}'s model spec differs from this build's in {', '.join(differ)}: "
                "the nightly run retrains from scratch")
    return None


def warm_train(home: Home, taskset: str, settings: PipelineSettings, on_step: Callable | None = None,
               on_validation: Callable | None = None) -> dict:
    """Warm-start ``taskset``'s champion for ``arrival.warm_steps`` steps (or find it done); returns
    result.json (with ``warm_start``), or ``{"skipped": why}`` when there is no champion to start from
    or its spec does not fit this build. Trains in this process."""
    from medmeta.tasksets.store import read_manifest
    from medmeta.training.arrivals import champion_card
    from medmeta.training.train import train_in_process

    champion = champion_card(home, taskset)
    if champion is None:
        return {"taskset": taskset, "skipped": f"task set {taskset} has no champion to warm-start from"}
    why = why_not_warm(champion, read_manifest(home, taskset), settings)
    if why is not None:
        return {"taskset": taskset, "skipped": why}
    warm = warm_start_of(champion, int(settings.arrival["warm_steps"]))
    return train_in_process(home, taskset, champion.card["config"]["spec"]["algorithm"], settings, on_step=on_step,
                            on_validation=on_validation, warm_start=warm, init_weights=champion.load_weights())
