"""Publish an evaluated model to the registry: its weights, a model card, and the champion gate.

The registry name is the task set's (every algorithm trained on one task set competes for its
``champion`` alias). The gate compares accuracy at ``publish.shots`` on the same meta-test
episodes: when the champion was scored on other episodes (an older task set), it is scored
again here on the candidate's, if its inputs match; otherwise the candidate stays challenger
with the reason "not comparable".
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.runs import read_json, require_model
from medmeta.training.settings import PipelineSettings


def registry_name(taskset: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", taskset.lower()).strip("-_")[:64].strip("-_")
    if not slug:
        raise MedmetaError(f"task set name {taskset!r} gives no registry name")
    return slug


def _estimate(row: dict) -> dict:
    return {"mean": round(row["mean"], 6), "ci_low": round(row["low"], 6), "ci_high": round(row["high"], 6),
            "ci_level": 0.95}


def model_card(identity: dict, result: dict, evaluation: dict, shots: int, validation: dict, manifest: dict) -> dict:
    from validation.report import digest

    at = next(e for e in evaluation["by_shots"] if e["shots"] == shots)
    rows = {r["method"]: r for r in at["rows"]}
    metrics = {"accuracy": _estimate(rows["meta"])}
    deltas: dict[str, dict] = {}
    for entry in evaluation["by_shots"]:
        k = entry["shots"]
        for row in entry["rows"]:
            metrics[f"accuracy_{k}shot" if row["method"] == "meta" else f"{row['method']}_accuracy_{k}shot"] = \
                _estimate(row)
        for pair in entry["paired"]:
            deltas.setdefault(pair["vs"], {})[f"accuracy_{k}shot"] = {
                "mean": round(pair["mean_difference"], 6), "ci_low": round(pair["mean_difference"] - pair["ci95"], 6),
                "ci_high": round(pair["mean_difference"] + pair["ci95"], 6), "ci_level": 0.95}
    spec = identity["spec"]
    what = "diseases" if spec["kind"] == "disease" else "drug response"
    warm = identity.get("warm_start")  # medmeta.training.warm: said in the card, never mistaken for from scratch
    started = f"; warm-started from {warm['parent']} for {warm['steps']} steps" if warm else ""
    card = {
        "algorithm": spec["algorithm"],
        "purpose": (f"{spec['n_way']}-way few-shot classification of {what} from {spec['inputs']}, meta-trained on "
                    f"task set {identity['taskset']['name']}{started}; adapt it to new classes with a few labelled "
                    "cases each"),
        "config": {"spec": spec, "train": identity["train"]},
        "metrics": metrics,
        "deltas": deltas,
        "evaluation_id": at["evaluation_id"],
        "evaluation": {"episodes": at["episodes"], "shots": shots, "ways": evaluation["ways"],
                       "queries": evaluation["queries"], "seed": evaluation["seed"]},
        "task_set": {"name": identity["taskset"]["name"], "digest": identity["taskset"]["digest"],
                     "splits": {s: [c["code"] for c in e["classes"]] for s, e in manifest["splits"].items()},
                     "excluded": manifest["excluded"]},
        "snapshot": identity["taskset"]["snapshot"],
        "validation_digest": digest(validation),
        "device": result["device"],
        "training": {"model": result["model"], "steps": result["steps"], "stop_reason": result["stop_reason"],
                     "best_step": result["best_step"], "seconds": result["seconds"]},
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage": "medmeta predict --model NAME@champion --support SUPPORT --query QUERY",
    }
    if warm:
        card["warm_start"] = dict(warm)
    return card


def dicom_modalities(home: Home, tasks) -> list[str] | None:
    """The DICOM modalities of the task set's patients' validated images (None for records models):
    ``medmeta predict`` refuses images of any other modality."""
    import pandas as pd

    from validation.gate import validation_dir

    if tasks.manifest["inputs"] == "records":
        return None
    images = pd.read_parquet(validation_dir(home, tasks.manifest["snapshot"]) / "tables" / "images.parquet",
                             columns=["patient_id", "modality"])
    patients = {p for split in tasks.splits.values() for p in split.patient_ids}
    return sorted(str(m) for m in images[images["patient_id"].isin(patients)]["modality"].dropna().unique())


def champion_score(home: Home, name: str, card: dict, tasks):
    """The current champion's accuracy on the candidate's meta-test episodes, or None when it
    has no champion or one whose inputs differ (then the gate says "not comparable")."""
    from medmeta import registry
    from medmeta.training.evaluate import score_on
    from medmeta.training.models import build_learner

    try:
        champion = registry.resolve(home, f"{name}@champion")
    except registry.ModelNotFound:
        return None
    if champion.card.get("evaluation_id") == card["evaluation_id"]:
        return None  # the registry reads the champion's own score from its card
    theirs = champion.card.get("config", {}).get("spec", {})
    ours = card["config"]["spec"]
    if any(theirs.get(k) != ours.get(k) for k in ("kind", "inputs", "n_way", "features")):
        return None
    learner = build_learner(theirs)
    learner.load_state_dict(champion.load_weights())
    learner.eval()
    ev = card["evaluation"]
    value = score_on(learner, tasks, ev["shots"], ev["episodes"], ev["seed"])
    return registry.ChampionScore(version=champion.version, evaluation_id=card["evaluation_id"], value=value)


def publish_model(home: Home, model: str, settings: PipelineSettings) -> dict:
    """Publish the trained, evaluated ``model``; returns the new version's summary."""
    from safetensors.torch import load_file

    from medmeta import registry
    from medmeta.tasksets.store import load_taskset
    from validation.gate import require_passed

    folder = require_model(home, model)
    identity = read_json(folder / "spec.json", "model spec")
    result = read_json(folder / "result.json", "training result")
    if not (folder / "evaluation.json").is_file():
        raise MedmetaError(f"model {model} has not been evaluated: run `medmeta evaluate {model}` first")
    evaluation = read_json(folder / "evaluation.json", "evaluation")
    validation = require_passed(home, identity["taskset"]["snapshot"])
    tasks = load_taskset(home, identity["taskset"]["name"])
    shots = int(settings.publish["shots"])
    if shots not in [e["shots"] for e in evaluation["by_shots"]]:
        raise MedmetaError(f"model {model} was evaluated at shots {[e['shots'] for e in evaluation['by_shots']]}, "
                           f"not at publish.shots = {shots}: evaluate it again")
    card = model_card(identity, result, evaluation, shots, validation, tasks.manifest)
    card["dicom_modalities"] = dicom_modalities(home, tasks)
    name = registry_name(identity["taskset"]["name"])
    earlier = _published(home, name, model, card["evaluation_id"])
    if earlier is not None:  # a rerun: the same model on the same evaluation is not published twice
        return {**_summary(model, earlier, card["metrics"]["accuracy"]), "cached": True}
    gate = registry.Gate(metric="accuracy", higher_is_better=True, margin=float(settings.publish["margin"]))
    version = registry.publish(home, name, load_file(str(folder / "weights.safetensors")), card, gate=gate,
                               champion_score=champion_score(home, name, card, tasks))
    return {**_summary(model, version, card["metrics"]["accuracy"]), "cached": False}


def _published(home: Home, name: str, model: str, evaluation: str):
    from medmeta import registry

    if name not in registry.model_names(home):
        return None
    for number in reversed(registry.versions(home, name)):
        version = registry.resolve(home, f"{name}@{number}")
        if version.card.get("training", {}).get("model") == model and version.card.get("evaluation_id") == evaluation:
            return version
    return None


def _summary(model: str, version, accuracy: dict) -> dict:
    return {"model": model, "name": version.name, "version": version.version, "ref": version.ref,
            "decision": version.card["gate"]["decision"], "reason": version.card["gate"]["reason"],
            "accuracy": accuracy, "card": str(version.card_md_path)}
