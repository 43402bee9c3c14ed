"""A compound-activity model's evaluation in the words the pipeline's summary uses: per support size, each
method's dAUPRC with its 95% interval and the meta-learner minus each baseline on the same draws."""

from __future__ import annotations

LEARNER = "activity_gp"


def activity_headline(evaluation) -> list[dict]:
    """``[{"support": S, "units": n, "methods": {method: {"dauprc", "ci95", "low", "high"}},
    "paired": {baseline: {"difference", "ci95"}}}]`` of a ``medmeta.chem.publish.ActivityEvaluation``
    (``paired``: the meta-learner minus the baseline, per unit)."""
    result = evaluation.result
    out = []
    for size in result.sizes:
        methods = {}
        for method in result.methods:
            e = result.estimate(method, size)
            methods[method] = {"dauprc": round(e.mean, 4), "ci95": round(e.half_width, 4), "low": round(e.low, 4),
                               "high": round(e.high, 4)}
        paired = {}
        if LEARNER in result.methods:
            for other in result.methods:
                if other != LEARNER:
                    d = result.difference(LEARNER, other, size)
                    paired[other] = {"difference": round(d.mean, 4), "ci95": round(d.half_width, 4)}
        out.append({"support": size, "units": len(result.units), "methods": methods, "paired": paired})
    return out


def estimate_text(entry: dict | None) -> str:
    """``.208 [.175, .241]``: a dAUPRC with its 95% interval."""
    if not entry:
        return "-"
    return f"{entry['dauprc']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def difference_text(entry: dict, other: str) -> str:
    paired = entry.get("paired", {}).get(other)
    return "-" if paired is None else f"{paired['difference']:+.3f} ± {paired['ci95']:.3f}"


def compound_lines(models: list[dict]) -> list[str]:
    """One line per compound-activity model of a run: the meta-learner and the baselines at the gate's support
    size, and what was published (the meta-learner, or a baseline because it won)."""
    lines = []
    for m in models:
        published = m["published"]
        gate = next((e for e in m["evaluation"] if e["support"] == m.get("gate_support")), m["evaluation"][0])
        others = ", ".join(f"{b} {estimate_text(v)} (meta {difference_text(gate, b)})"
                           for b, v in gate["methods"].items() if b != LEARNER)
        what = ("the meta-learner" if not published.get("baseline")
                else f"the baseline {published['published']} (it beat the meta-learner)")
        lines.append(f"compounds on {m['taskset']} ({'trained' if m['trained'] else 'unchanged'}, {m['steps']} steps, "
                     f"{m['device']}): S={gate['support']} dAUPRC meta-learner {estimate_text(gate['methods'].get(LEARNER))}, "
                     f"{others} -> {published['ref']} is {what} (gate: {published['decision']}"
                     f"{', already published' if published.get('cached') else ''})")
    return lines


def compound_markdown(models: list[dict]) -> list[str]:
    """The summary artifact's section for compound-activity models (empty without any)."""
    if not models:
        return []
    out = ["", "## Compound activity models against the baselines", "",
           "dAUPRC on the test tasks (FS-Mol protocol, the same draws for every method) with its 95% interval; "
           "*meta − X*: the paired difference per (task, split) unit.", "",
           "| task set | support | meta-learner | baselines | meta − each baseline | published |", "|---|---:|---|---|---|---|"]
    for m in models:
        published = m["published"]
        what = "meta-learner" if not published.get("baseline") else f"baseline {published['published']}"
        for e in m["evaluation"]:
            others = "; ".join(f"{b} {estimate_text(v)}" for b, v in e["methods"].items() if b != LEARNER)
            diffs = "; ".join(f"{b} {difference_text(e, b)}" for b in e["methods"] if b != LEARNER)
            out.append(f"| {m['taskset']} | {e['support']} | {estimate_text(e['methods'].get(LEARNER))} | {others} | "
                       f"{diffs} | `{published['ref']}` ({what}, {published['decision']}) |")
    return out
