"""Model cards: the caller's content checked, the registry's bookkeeping added, Markdown rendered.

The caller gives ``algorithm``, ``metrics`` and ``evaluation_id`` (required) and any of
``purpose``, ``config``, ``deltas``, ``task_set``, ``snapshot``, ``validation_digest``, ``device``,
``parent``, ``usage``, ``baseline`` (a method fitted on each support set at prediction time, published
with no weights: ``{"method", "features", "why"}``) and further JSON keys. The registry adds the ``RESERVED`` keys (``retired``
only as read, from ``aliases.json``, once the model is retired).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
from pathlib import Path

from medmeta.registry.errors import InvalidCard

FORMAT = 1
RESERVED = ("format", "name", "version", "created", "weights", "code_version", "gate", "retired")
REQUIRED = {"algorithm": str, "metrics": dict, "evaluation_id": str}


def check_content(content: dict) -> dict:
    """A JSON-safe copy of the caller's card content, or ``InvalidCard`` naming the problem."""
    if not isinstance(content, dict):
        raise InvalidCard("the card must be a dict")
    taken = sorted(k for k in content if k in RESERVED)
    if taken:
        raise InvalidCard(f"card keys {', '.join(taken)} are set by the registry, not the caller")
    for key, kind in REQUIRED.items():
        if not isinstance(content.get(key), kind) or not content[key]:
            raise InvalidCard(f"the card needs {key!r} (a non-empty {kind.__name__})")
    try:
        content = json.loads(json.dumps(content, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise InvalidCard(f"the card must be plain JSON (str, numbers, lists, dicts; no NaN): {error}") from None
    for metric, entry in content["metrics"].items():
        _check_estimate(entry, f"metrics.{metric}")
    baseline = content.get("baseline")
    if baseline is not None and not (isinstance(baseline, dict) and isinstance(baseline.get("method"), str)
                                     and baseline["method"]):
        raise InvalidCard("the card's baseline must be {'method': name, ...} (a method fitted on the support set)")
    deltas = content.get("deltas", {})
    if not isinstance(deltas, dict) or not all(isinstance(m, dict) for m in deltas.values()):
        raise InvalidCard("the card's deltas must be {baseline: {metric: number or estimate}}")
    for baseline, metrics in deltas.items():
        for metric, entry in metrics.items():
            _check_estimate(entry, f"deltas.{baseline}.{metric}")
    return content


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_estimate(entry, where: str) -> None:
    """A metric is a number or {"mean" (or "value"): x, optional "ci_low", "ci_high", "ci_level", ...}."""
    if _is_number(entry):
        return
    if (isinstance(entry, dict) and _is_number(entry.get("mean", entry.get("value")))
            and all(_is_number(entry[k]) for k in ("ci_low", "ci_high", "ci_level") if k in entry)):
        return
    raise InvalidCard(f"card {where}: a metric is a number or {{'mean': x, 'ci_low': a, 'ci_high': b, 'ci_level': 0.95}}")


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The medmeta package version and, when the code runs from a git checkout, its commit."""
    import medmeta

    version = {"package": medmeta.__version__, "git_commit": None, "git_dirty": None}
    source = Path(medmeta.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            version["git_commit"] = commit.stdout.strip()
            version["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def _number(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else str(x)


def _estimate(entry) -> tuple[str, str]:
    """(value, interval) of a metric written as a number or {mean, ci_low, ci_high, ci_level}."""
    if not isinstance(entry, dict):
        return _number(entry), ""
    value = entry.get("mean", entry.get("value", ""))
    if "ci_low" in entry and "ci_high" in entry:
        level = entry.get("ci_level", 0.95)
        return _number(value), f"[{_number(entry['ci_low'])}, {_number(entry['ci_high'])}] ({_number(level * 100)}%)"
    return _number(value), ""


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(card: dict) -> str:
    """A card for people: what the model is for, how good it is, where it comes from, how to use it."""
    name, version = card["name"], card["version"]
    lines = [f"# {name} v{version}", ""]
    lines += [card.get("purpose") or f"A few-shot model trained with {card['algorithm']}.", ""]
    baseline = card.get("baseline")
    if baseline:
        lines += [f"**A baseline, not a meta-learned model:** {baseline['method']}"
                  + (f" on {baseline['features']}" if baseline.get("features") else "")
                  + ", fitted on each support set when it predicts (no learned weights). "
                  + (baseline.get("why") or ""), ""]
    gate = card["gate"]
    lines += [f"**Gate at publish:** {gate['decision']}. {gate['reason']}", ""]
    lines += ["## Metrics", "", f"Evaluation `{card['evaluation_id']}`.", "",
              "| metric | value | confidence interval |", "|---|---|---|"]
    for metric, entry in card["metrics"].items():
        lines.append("| " + " | ".join(_cell(c) for c in (metric, *_estimate(entry))) + " |")
    lines.append("")
    if card.get("deltas"):
        lines += ["## Compared with the baselines", "", "Difference of this model minus the baseline.", "",
                  "| baseline | metric | difference | confidence interval |", "|---|---|---|---|"]
        for baseline, metrics in card["deltas"].items():
            for metric, entry in (metrics.items() if isinstance(metrics, dict) else [("", metrics)]):
                lines.append("| " + " | ".join(_cell(c) for c in (baseline, metric, *_estimate(entry))) + " |")
        lines.append("")
    lines += ["## Lineage", ""]
    task_set = card.get("task_set")
    if isinstance(task_set, dict):
        task_set = ", ".join(f"{k} `{task_set[k]}`" for k in ("digest", "path", "id") if k in task_set) or "(manifest in card.json)"
    parent = card.get("parent")
    facts = [("algorithm", card["algorithm"]), ("snapshot", card.get("snapshot")),
             ("validation result digest", card.get("validation_digest")), ("task set", task_set),
             ("parent model", f"{parent['name']}@{parent['version']}" if isinstance(parent, dict) else parent),
             ("device", card.get("device")), ("created (UTC)", card["created"]),
             ("code", "medmeta {package}{commit}".format(
                 package=card["code_version"]["package"],
                 commit=f", commit {card['code_version']['git_commit']}" + (" (with local changes)" if card["code_version"].get("git_dirty") else "")
                 if card["code_version"].get("git_commit") else "")),
             ("weights", f"`{card['weights']['file']}`, {card['weights']['parameters']} parameters, sha256 `{card['weights']['sha256']}`"
              + (" (none: fitted on the support set)" if baseline else ""))]
    lines += [f"- {label}: {value}" for label, value in facts if value not in (None, "")]
    lines.append("")
    if card.get("config"):
        lines += ["## Configuration", "", "```json", json.dumps(card["config"], indent=2, sort_keys=True), "```", ""]
    lines += ["## Use it", "", card.get("usage") or (
        f"```sh\nmedmeta predict {name}@{version} ...\n```\n\n"
        f"adapts this version on a support set of labelled cases and predicts the query cases "
        f"(`medmeta predict --help` lists the inputs). `medmeta models show {name}@{version} --json` prints this card."), ""]
    return "\n".join(lines)


def render_retirement(retired: dict) -> str:
    """The ``Retired`` section of a retired model's card (``store.retire``)."""
    lines = ["## Retired", "", f"Retired {retired.get('time')}: {retired.get('reason')}", ""]
    previous = retired.get("previous") or {}
    held = ", ".join(f"{a} -> version {v}" for a, v in previous.items() if v is not None)
    if held:
        lines += [f"Its aliases were cleared ({held}); the versions stay and resolve as `NAME@<n>`.", ""]
    return "\n".join(lines)
