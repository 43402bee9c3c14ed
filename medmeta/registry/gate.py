"""The champion gate: a new version becomes champion only if it beats the champion on the same
evaluation (same meta-test tasks and episodes) by more than a margin.

A metric in a card is a number or ``{"mean": x, "ci_low": a, "ci_high": b, ...}``. Scores from
different evaluations are never compared: the champion's own card is used when its
``evaluation_id`` equals the candidate's, else the caller's ``ChampionScore`` (the champion
re-scored on the candidate's evaluation), else the candidate is kept as challenger, "not comparable".

``Gate(rule="estimate")`` is for a metric each version estimates on its own cases (an adapted
model's leave-one-out accuracy, ``{"mean", "ci_low", "ci_high", "n"}``), where no common evaluation
exists: the candidate becomes champion when the lower end of its interval is not below the
champion's (minus the margin). The lower end rises with both the accuracy and the number of cases,
so at equal accuracy the version based on more cases wins; at an equal lower end the newer version
wins. A version without an estimate (too few cases) becomes champion only over a champion without
one either.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from medmeta.registry.errors import InvalidCard


RULES = ("evaluation", "estimate")


@dataclass(frozen=True)
class Gate:
    """Which metric decides, which way is better, and by how much a candidate must win."""

    metric: str = "accuracy"
    higher_is_better: bool = True  # accuracy: True; mse, loss: False
    margin: float = 0.0  # absolute; the candidate must be better by MORE than this
    rule: str = "evaluation"  # "evaluation": same evaluation only; "estimate": the intervals' lower ends

    def __post_init__(self):
        if self.rule not in RULES:
            raise InvalidCard(f"the gate's rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise InvalidCard("the gate's metric must be a non-empty name, e.g. 'accuracy' or 'mse'")
        if not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin) or self.margin < 0:
            raise InvalidCard(f"the gate's margin must be a finite number >= 0, not {self.margin!r}")


@dataclass(frozen=True)
class ChampionScore:
    """The champion (``version``) scored by the caller on the candidate's ``evaluation_id``."""

    version: int
    evaluation_id: str
    value: float


def evaluation_id(task_set_digest: str, seed: int, episodes: int, **more) -> str:
    """One id for one evaluation: the meta-test task set, the episode seed and count (and any
    further settings that change the episodes, e.g. ``n_way``, ``k_shot``, ``query``)."""
    parts = {"task_set": task_set_digest, "seed": seed, "episodes": episodes, **more}
    return "ev-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def metric_value(metrics: dict, metric: str) -> float | None:
    """The point value of ``metric`` in a card's ``metrics``, or None when absent."""
    entry = (metrics or {}).get(metric)
    if isinstance(entry, dict):
        entry = entry.get("mean", entry.get("value"))
    if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not math.isfinite(entry):
        return None
    return float(entry)


def decide(gate: Gate, candidate_card: dict, champion_version: int | None, champion_card: dict | None,
           champion_score: ChampionScore | None) -> dict:
    """The gate's decision for a candidate, as recorded in its card under ``gate``.

    ``decision`` is ``champion`` or ``challenger``; ``comparable`` says whether numbers were compared;
    ``improvement`` is how much better the candidate is (positive = better, in the metric's units).
    """
    evaluation_id = candidate_card["evaluation_id"]
    candidate = metric_value(candidate_card["metrics"], gate.metric)
    record = {**asdict(gate), "evaluation_id": evaluation_id, "candidate": candidate,
              "champion_version": champion_version, "champion": None, "improvement": None}
    if champion_version is None:
        return {**record, "decision": "champion", "comparable": False,
                "reason": "no champion yet: the first version (or the first after the alias was cleared) becomes champion"}
    if gate.rule == "estimate":
        return _decide_on_estimates(gate, record, candidate_card, champion_version, champion_card or {})
    champion, source = None, None
    if champion_score is not None and champion_score.version == champion_version:
        champion, source = float(champion_score.value), "the score given for it on this evaluation"
    elif champion_card is not None and champion_card.get("evaluation_id") == evaluation_id:
        champion, source = metric_value(champion_card.get("metrics", {}), gate.metric), "its card"
    if champion is None:
        given = (f"; the score given was for version {champion_score.version}, not the champion"
                 if champion_score is not None else "")
        return {**record, "decision": "challenger", "comparable": False,
                "reason": (f"not comparable: champion version {champion_version} was not scored with "
                           f"{gate.metric} on evaluation {evaluation_id}{given}; pass its score on this "
                           f"evaluation (ChampionScore) to compare")}
    improvement = candidate - champion if gate.higher_is_better else champion - candidate
    better = "higher" if gate.higher_is_better else "lower"
    record = {**record, "champion": champion, "improvement": improvement, "comparable": True}
    numbers = (f"{gate.metric} {candidate:.6g} vs champion version {champion_version}'s {champion:.6g} "
               f"({source}) on evaluation {evaluation_id}, {better} is better: improvement {improvement:.6g}")
    if improvement > gate.margin:
        return {**record, "decision": "champion", "reason": f"beats the champion by more than the margin {gate.margin:g}: {numbers}"}
    return {**record, "decision": "challenger",
            "reason": f"does not beat the champion by more than the margin {gate.margin:g}: {numbers}"}


def _lower_end(metrics: dict, metric: str) -> tuple[float, int] | None:
    entry = (metrics or {}).get(metric)
    if not isinstance(entry, dict) or metric_value(metrics, metric) is None:
        return None
    low, n = entry.get("ci_low"), entry.get("n", 0)
    if isinstance(low, bool) or not isinstance(low, (int, float)) or not math.isfinite(low):
        return None
    return float(low), int(n) if isinstance(n, int) and not isinstance(n, bool) else 0


def _decide_on_estimates(gate: Gate, record: dict, candidate_card: dict, champion_version: int,
                         champion_card: dict) -> dict:
    mine = _lower_end(candidate_card["metrics"], gate.metric)
    theirs = _lower_end(champion_card.get("metrics", {}), gate.metric)
    record = {**record, "champion": metric_value(champion_card.get("metrics", {}), gate.metric),
              "comparable": mine is not None and theirs is not None}
    if mine is None:
        won = theirs is None
        why = ("neither it nor champion version {v} has a {m} estimate: the newer version wins" if won else
               "it has no {m} estimate (too few cases), champion version {v} has one")
        return {**record, "decision": "champion" if won else "challenger",
                "reason": why.format(v=champion_version, m=gate.metric)}
    if theirs is None:
        return {**record, "decision": "champion",
                "reason": f"champion version {champion_version} has no {gate.metric} estimate, this version has one"}
    improvement = mine[0] - theirs[0]
    record = {**record, "improvement": improvement}
    numbers = (f"{gate.metric} lower 95% bound {mine[0]:.4g} (based on {mine[1]} cases) vs champion version "
               f"{champion_version}'s {theirs[0]:.4g} (based on {theirs[1]} cases)")
    if improvement >= -gate.margin:
        return {**record, "decision": "champion", "reason": f"not worse (the rule 'estimate'): {numbers}"}
    return {**record, "decision": "challenger", "reason": f"worse (the rule 'estimate'): {numbers}"}


def check_inputs(gate: Gate, card: dict, champion_score: ChampionScore | None) -> None:
    """Refuse, before anything is written, gate input that could only be a caller's mistake."""
    if gate.rule == "estimate":
        return  # a version may have no estimate yet; the decision says so
    if metric_value(card.get("metrics", {}), gate.metric) is None:
        raise InvalidCard(f"the card's metrics have no number for the gate's metric {gate.metric!r} "
                          f"(metrics present: {', '.join(sorted(card.get('metrics', {}))) or 'none'})")
    if champion_score is None:
        return
    if not isinstance(champion_score, ChampionScore):
        raise InvalidCard("champion_score must be a ChampionScore(version, evaluation_id, value)")
    if champion_score.evaluation_id != card["evaluation_id"]:
        raise InvalidCard(f"the champion's score was measured on evaluation {champion_score.evaluation_id}, the "
                          f"candidate on {card['evaluation_id']}: the gate compares scores on the same evaluation only")
    value = champion_score.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidCard(f"the champion's score must be a finite number, not {value!r}")
