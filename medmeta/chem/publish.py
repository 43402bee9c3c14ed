"""Evaluate a trained compound-activity model against the field's baselines, and publish the honest winner.

    evaluate_activity_model(home, model, settings) -> ActivityEvaluation
    publish_activity_model(home, model, settings) -> dict

    evaluate_compound_models(home, models, settings) -> ActivityEvaluation
    publish_compound_models(home, models, settings) -> dict

Evaluation (``medmeta.chem.evaluation.run_protocol``, one call): every trained model of the task set (``activity_gp``,
the episodic learners of ``medmeta.chem.episodic``; one per learner, named by it) and
every baseline of ``compounds.baselines`` (``medmeta.chem.baselines``) on the task set's ``test`` tasks, at each
support size of ``compounds.support_sizes``, ``compounds.draws`` draws per task, the draws seeded by (the task set's
split seed, task, S, draw): every method on the same support and query sets. A test task too small for the largest
support (fewer than S/2 + 1 compounds of a class) is left out and named in ``excluded``. Saved as
``evaluation.json`` beside the model; a rerun with the same model, task set and settings reads it.

Publishing (the honest gate): the registry model named after the task set gets the best method at
``compounds.gate_support_size`` (highest mean dAUPRC over the test tasks; a tie goes to the baseline):

- ActivityGP: its weights (the ``ActivityGP`` state dict without the optimiser's moments) and a card with
  ``task_kind: compound_activity`` and ``config: {learner, learner_config, featuriser, threshold, support_sizes}``;
- an episodic learner: its weights (the learner's state dict and its ``input_scaling.*`` tensors) and ``config:
  {learner, spec, featuriser, scaling, threshold, support_sizes}`` (``medmeta.chem.episodic.learner_from_card``);
- else the winning baseline itself: no weights, ``baseline: {method, features, why}`` where ``why`` says by how
  much it beat the best meta-learner, with the paired interval, ``config: {featuriser, threshold}``.

Either card's ``metrics``: ``dauprc`` (the published method at the gate's size; the gate's metric) and
``dauprc_S<S>`` per support size, each a mean with its 95% interval, and ``<method>_dauprc_S<S>`` for every other
method; ``deltas``: the published method minus each other method, per S (card.md: "Compared with the baselines").
The champion gate against an earlier version compares ``dauprc`` on the same ``evaluation_id`` only
(``medmeta.registry.gate``); otherwise the new version stays challenger, "not comparable".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.runs import manifest_digest, model_dir, read_json, write_json

EVALUATION = "evaluation.json"
METRIC = "dauprc"
NAMES = {"activity_gp": "the meta-learner (ActivityGP)", "rf": "RandomForest",
         "logistic_regression": "logistic regression", "tanimoto_knn": "Tanimoto nearest neighbours",
         "maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile", "protonet": "ProtoNet",
         "matchingnet": "Matching Networks"}


@dataclass
class ActivityEvaluation:
    """One evaluation of a model and the baselines on its task set's test tasks (``result``: per-unit values)."""

    evaluation_id: str  # what the champion gate compares on: the test tasks, split seed, support sizes, draws
    model: str
    taskset: str
    taskset_digest: str
    split_seed: int
    result: "object"  # medmeta.chem.evaluation.ProtocolResult
    excluded: list[dict] = field(default_factory=list)  # test tasks too small to draw from: task, reason
    notes: dict[str, str] = field(default_factory=dict)  # method -> what it is
    models: dict[str, str] = field(default_factory=dict)  # learned method -> its trained model (the rest: baselines)

    @property
    def learners(self) -> list[str]:
        """The methods that are trained models (in evaluation order); the others are baselines."""
        return [m for m in self.result.methods if m in self.models] or ["activity_gp"]

    def to_dict(self) -> dict:
        return {"evaluation_id": self.evaluation_id, "model": self.model, "taskset": self.taskset,
                "taskset_digest": self.taskset_digest, "split_seed": self.split_seed, "excluded": self.excluded,
                "notes": self.notes, "models": self.models, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "ActivityEvaluation":
        from medmeta.chem.evaluation import ProtocolResult

        return cls(data["evaluation_id"], data["model"], data["taskset"], data["taskset_digest"], int(data["split_seed"]),
                   ProtocolResult.from_dict(data["result"]), list(data.get("excluded", [])), dict(data.get("notes", {})),
                   dict(data.get("models", {})))


def require_activity_model(home: Home, model: str) -> Path:
    folder = model_dir(home, model)
    if not (folder / "result.json").is_file():
        raise MedmetaError(f"no trained compound-activity model {model!r} in {home.training}: train it first")
    return folder


def _taskset(home: Home, identity: dict):
    from medmeta.chem.target_tasks import load_target_taskset

    tasks = load_target_taskset(home, identity["taskset"]["name"])
    if manifest_digest(tasks.manifest) != identity["taskset"]["digest"]:
        raise MedmetaError(f"task set {identity['taskset']['name']} was rebuilt since this model was trained: "
                           "train the model again on it")
    return tasks


def evaluate_activity_model(home: Home, model: str, settings) -> ActivityEvaluation:
    """One trained model and the baselines (``evaluate_compound_models(home, [model], settings)``)."""
    return evaluate_compound_models(home, [model], settings)


def _method_of(folder: Path, identity: dict, model: str, device: str):
    """A trained compound model as a ``Method``: ActivityGP's kernel scores, or an episodic learner's
    probability of the active class."""
    from medmeta.chem.evaluation import scorer_method

    featuriser = identity["featuriser"]
    if identity["learner"] == "activity_gp":
        from medmeta.chem.training import load_learner

        return scorer_method(load_learner(folder, device).scores, featuriser,
                             f"ActivityGP meta-trained ({model}) on {featuriser}", device)
    from medmeta.chem.episodic import episodic_method, load_episodic

    learner, scaling = load_episodic(folder, device)
    hidden = identity["spec"]["backbone"]["config"]["hidden"]
    return episodic_method(learner, scaling, featuriser,
                           f"{_label(identity['learner'])} meta-trained ({model}) on {featuriser}, MLP "
                           f"{'-'.join(str(h) for h in [identity['spec']['backbone']['config']['in_features'], *hidden])}"
                           f"{', standardised' if scaling.standardises else ''}; score = P(active)", device)


def evaluate_compound_models(home: Home, models: list[str], settings) -> ActivityEvaluation:
    """Every trained model of ``models`` (one task set; one model per learner) and the baselines on the task set's
    test tasks, on the same draws: one ``run_protocol`` call. Saved in the first model's folder and reused while
    the test tasks, draws, methods and models are the same."""
    from medmeta import registry
    from medmeta.chem.evaluation import Split, baseline_method, run_protocol
    from medmeta.chem.training import drawable, resolve_device, task_features

    if not models:
        raise MedmetaError("no compound model to evaluate")
    compounds = settings.compounds
    folders = [require_activity_model(home, m) for m in models]
    identities = [read_json(f / "spec.json", "model spec") for f in folders]
    learners = [i["learner"] for i in identities]
    if len(set(learners)) != len(learners):
        raise MedmetaError(f"one model per learner is evaluated at a time; got {', '.join(learners)}")
    if len({i["taskset"]["digest"] for i in identities}) != 1:
        raise MedmetaError(f"models {', '.join(models)} were not trained on the same task set")
    identity = identities[0]
    tasks = _taskset(home, identity)
    sizes, draws = [int(s) for s in compounds["support_sizes"]], int(compounds["draws"])
    baselines = [b for b in compounds["baselines"] if b not in learners]
    split_seed = int(tasks.manifest.get("seed", 0))
    test = tasks.split("test")
    usable = [t for t in test if drawable(t.labels, max(sizes))]
    excluded = [{"task": t.task, "reason": f"too_small: fewer than {max(sizes) // 2 + 1} compounds of a class "
                                           f"({int(t.labels.sum())} actives, {len(t) - int(t.labels.sum())} inactives) "
                                           f"for a support of {max(sizes)} and a query"} for t in test if t not in usable]
    if len(usable) < 2:
        raise MedmetaError(f"task set {tasks.manifest['name']} has {len(usable)} test task(s) large enough for a support "
                           f"of {max(sizes)}: an interval needs two at least")
    evaluation_id = registry.evaluation_id(identity["taskset"]["digest"], split_seed, draws, support_sizes=sizes,
                                           protocol="fs-mol", tasks=[t.task for t in usable])
    methods_named = [*learners, *baselines]
    trained = dict(zip(learners, models))
    saved = folders[0] / EVALUATION
    if saved.is_file():
        known = ActivityEvaluation.from_dict(read_json(saved, "evaluation"))
        if (known.evaluation_id == evaluation_id and known.result.methods == methods_named
                and (known.models or {"activity_gp": models[0]}) == trained):
            return known
    device = resolve_device(str(compounds["device"]))
    methods = {i["learner"]: _method_of(f, i, m, device) for f, i, m in zip(folders, identities, models)}
    methods.update({b: baseline_method(b) for b in baselines})
    needed = {m.featuriser for m in methods.values()}
    only = type(tasks)(tasks.manifest, {t.task: t for t in usable})
    features = {f: task_features(home, only, f) for f in sorted(needed)}
    result = run_protocol({t.task: t.labels for t in usable}, features,
                          [Split(split_seed, (), tuple(t.task for t in usable))],  # trained already: no train tasks
                          methods, sizes, draws)
    evaluation = ActivityEvaluation(evaluation_id, models[0], tasks.manifest["name"], identity["taskset"]["digest"],
                                    split_seed, result, excluded, {m: methods[m].note for m in methods}, trained)
    write_json(saved, evaluation.to_dict())
    return evaluation


def _label(method: str) -> str:
    return NAMES.get(method, method)


def _card_metrics(result, winner: str, gate_size: int) -> tuple[dict, dict]:
    metrics = {METRIC: result.estimate(winner, gate_size).card()}
    for s in result.sizes:
        metrics[f"{METRIC}_S{s}"] = result.estimate(winner, s).card()
    for m in result.methods:
        if m != winner:
            for s in result.sizes:
                metrics[f"{m}_{METRIC}_S{s}"] = result.estimate(m, s).card()
    deltas = {m: {f"{METRIC}_S{s}": result.difference(winner, m, s).card() for s in result.sizes}
              for m in result.methods if m != winner}
    return metrics, deltas


def _verdict(diff) -> str:
    """Whether a paired difference's 95% interval clears zero, in words."""
    if diff.low > 0:
        return "the interval is above zero"
    return f"the interval includes zero: not a significant lead on {diff.n} test tasks"


def _why(result, winner: str, learner: str, gate_size: int) -> str:
    """One line: by how much the winning baseline beat the best meta-learner at the gate's size, with the interval."""
    won, lost = result.estimate(winner, gate_size), result.estimate(learner, gate_size)
    diff = result.difference(winner, learner, gate_size)
    return (f"{_label(winner)} has the highest dAUPRC at S={gate_size} on the {won.n} test tasks: {won.text()} "
            f"against {_label(learner)}'s {lost.text()}; paired difference {diff.mean:+.3f} "
            f"(95% CI [{diff.low:+.3f}, {diff.high:+.3f}]; {_verdict(diff)}), so the baseline, not the meta-learned "
            "model, is published")


def gate_winner(evaluation: ActivityEvaluation, gate_size: int) -> str:
    """The method with the highest mean dAUPRC at ``gate_size``; a tie goes to a baseline."""
    result = evaluation.result
    return result.best(gate_size, prefer=[m for m in result.methods if m not in evaluation.learners])


def activity_card(identity: dict, training: dict, evaluation: ActivityEvaluation, gate_size: int, manifest: dict,
                  validation: dict | None) -> tuple[dict, str]:
    """The card of the best method at ``gate_size`` and that method's name. ``identity`` and ``training``: the
    winner's model when a learner wins, else the evaluation's first model."""
    from medmeta.chem.baselines import BASELINES

    result = evaluation.result
    learners = evaluation.learners
    baselines = [m for m in result.methods if m not in learners]
    winner = gate_winner(evaluation, gate_size)
    metrics, deltas = _card_metrics(result, winner, gate_size)
    threshold = (manifest.get("threshold") or {}).get("value")
    best_baseline = max(baselines, key=lambda m: result.estimate(m, gate_size).mean)
    card = {
        "task_kind": "compound_activity",
        "metrics": metrics,
        "deltas": deltas,
        "evaluation_id": evaluation.evaluation_id,
        "evaluation": {"protocol": "FS-Mol (medmeta.chem.protocol)", "support_sizes": result.sizes,
                       "draws": result.n_draws, "gate_support_size": gate_size, "split_seed": evaluation.split_seed,
                       "test_tasks": [t for t, _ in result.units], "excluded": evaluation.excluded,
                       "methods": evaluation.notes, "models": evaluation.models},
        "task_set": {"name": manifest["name"], "digest": identity["taskset"]["digest"],
                     "splits": {s: [t for t, e in manifest["tasks"].items() if e["split"] == s]
                                for s in ("train", "val", "test")},
                     "excluded": manifest.get("excluded", [])},
        "snapshot": identity["taskset"]["snapshot"],
        "validation_digest": validation,
        "training": {"model": training["model"], "steps": training["steps"], "seconds": training["seconds"],
                     "device": training["device"], "validation": training.get("validation")},
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage": "medmeta predict --model NAME@champion --support ACTIVES.csv --query LIBRARY.csv",
    }
    if winner in learners and winner != "activity_gp":
        lead = result.difference(winner, best_baseline, gate_size)
        spec = identity["spec"]
        card.update({
            "algorithm": winner,
            "purpose": (f"ranks a compound library for a new target from a few measured compounds: {_label(winner)} "
                        f"(metalearn) over an MLP on {identity['featuriser']}, meta-trained on task set "
                        f"{manifest['name']}, adapted on each support set; at S={gate_size} its dAUPRC is above the best "
                        f"baseline's ({_label(best_baseline)}) by {lead.mean:+.3f} (paired 95% CI [{lead.low:+.3f}, "
                        f"{lead.high:+.3f}]; {_verdict(lead)})"),
            "config": {"learner": winner, "spec": spec, "featuriser": identity["featuriser"],
                       "scaling": training.get("scaling"), "threshold": threshold, "support_sizes": result.sizes},
            "device": training["device"],
        })
    elif winner == "activity_gp":
        lead = result.difference("activity_gp", best_baseline, gate_size)
        card.update({
            "algorithm": "activity_gp",
            "purpose": (f"ranks a compound library for a new target from a few measured compounds: a Tanimoto-kernel "
                        f"Gaussian process per support set with meta-learned kernel weights, trained on task set "
                        f"{manifest['name']}; at S={gate_size} its dAUPRC is above the best baseline's "
                        f"({_label(best_baseline)}) by {lead.mean:+.3f} (paired 95% CI [{lead.low:+.3f}, "
                        f"{lead.high:+.3f}]; {_verdict(lead)})"),
            "config": {"learner": "activity_gp", "learner_config": identity["learner_config"],
                       "featuriser": identity["featuriser"], "threshold": threshold, "support_sizes": result.sizes},
            "device": training["device"],
        })
    else:
        features = BASELINES[winner][1]
        card.update({
            "algorithm": winner,
            "purpose": (f"ranks a compound library for a new target from a few measured compounds: {_label(winner)} "
                        f"fitted on the support set; it beat the meta-learners trained on task set {manifest['name']} "
                        f"({', '.join(_label(m) for m in learners)})"),
            "baseline": {"method": winner, "features": features,
                         "why": _why(result, winner, max(learners, key=lambda m: result.estimate(m, gate_size).mean),
                                     gate_size)},
            "config": {"featuriser": features, "threshold": threshold},
            "device": "cpu",
        })
    return card, winner


def publish_activity_model(home: Home, model: str, settings) -> dict:
    """One trained model against the baselines (``publish_compound_models(home, [model], settings)``)."""
    return publish_compound_models(home, [model], settings)


def publish_compound_models(home: Home, models: list[str], settings) -> dict:
    """Evaluate (or read the evaluation of) ``models`` and the baselines on the same draws, and publish the best
    method at the gate's size as the task set's registry model: a trained model with its weights (an episodic
    learner's input scaling among them), or the winning baseline without weights."""
    from safetensors.torch import load_file

    from medmeta import registry
    from medmeta.training.publish import registry_name
    from validation.gate import read_result

    compounds = settings.compounds
    gate_size = int(compounds["gate_support_size"])
    evaluation = evaluate_compound_models(home, models, settings)
    if gate_size not in evaluation.result.sizes:
        raise MedmetaError(f"models {', '.join(models)} were evaluated at S {evaluation.result.sizes}, not at the "
                           f"gate's compounds.gate_support_size {gate_size}")
    winner = gate_winner(evaluation, gate_size)
    model = evaluation.models.get(winner, models[0])
    folder = require_activity_model(home, model)
    identity = read_json(folder / "spec.json", "model spec")
    training = read_json(folder / "result.json", "training result")
    tasks = _taskset(home, identity)
    validation = read_result(home, identity["taskset"]["snapshot"])
    if validation is not None and not validation.get("success"):
        raise MedmetaError(f"snapshot {identity['taskset']['snapshot']} failed validation: nothing trained on it is published")
    if validation is not None:
        from validation.report import digest

        validation = digest(validation)
    card, winner = activity_card(identity, training, evaluation, gate_size, tasks.manifest, validation)
    name = registry_name(identity["taskset"]["name"])
    earlier = _published(home, name, model, card["evaluation_id"], card["algorithm"])
    if earlier is not None:
        return {**_summary(models[0], earlier, winner), "cached": True}
    weights = {} if winner not in evaluation.learners else {
        k: v for k, v in load_file(str(folder / "weights.safetensors")).items() if not k.startswith("optim.")}
    gate = registry.Gate(metric=METRIC, higher_is_better=True, margin=float(compounds["margin"]))
    version = registry.publish(home, name, weights, card, gate=gate)
    return {**_summary(models[0], version, winner), "cached": False}


def _published(home: Home, name: str, model: str, evaluation_id: str, algorithm: str):
    from medmeta import registry

    if name not in registry.model_names(home):
        return None
    for number in reversed(registry.versions(home, name)):
        version = registry.resolve(home, f"{name}@{number}")
        card = version.card
        if (card.get("training", {}).get("model") == model and card.get("evaluation_id") == evaluation_id
                and card.get("algorithm") == algorithm):
            return version
    return None


def _summary(model: str, version, winner: str) -> dict:
    return {"model": model, "name": version.name, "version": version.version, "ref": version.ref,
            "published": winner, "baseline": "baseline" in version.card,
            "decision": version.card["gate"]["decision"], "reason": version.card["gate"]["reason"],
            METRIC: version.card["metrics"][METRIC], "card": str(version.card_md_path)}


__all__ = ["ActivityEvaluation", "activity_card", "evaluate_activity_model", "evaluate_compound_models", "gate_winner",
           "publish_activity_model", "publish_compound_models", "require_activity_model"]
