"""A compound-activity evaluation in the words the pipeline's summary uses: per support size, each method's
dAUPRC with its 95% interval and each trained model (ActivityGP, the episodic learners) minus each baseline on
the same draws."""

from __future__ import annotations

LEARNER = "activity_gp"


def activity_headline(evaluation) -> list[dict]:
    """``[{"support": S, "units": n, "learners": [...], "methods": {method: {"dauprc", "ci95", "low", "high"}},
    "paired": {baseline: {"difference", "ci95"}}, "paired_by_learner": {learner: {baseline: ...}}}]`` of a
    ``medmeta.chem.publish.ActivityEvaluation``. ``learners``: the trained models' methods (the rest are
    baselines); ``paired``: the first learner (ActivityGP by default) minus each baseline, per unit."""
    result = evaluation.result
    learners = [m for m in evaluation.learners if m in result.methods]
    baselines = [m for m in result.methods if m not in learners]
    out = []
    for size in result.sizes:
        methods = {}
        for method in result.methods:
            e = result.estimate(method, size)
            methods[method] = {"dauprc": round(e.mean, 4), "ci95": round(e.half_width, 4), "low": round(e.low, 4),
                               "high": round(e.high, 4)}
        by_learner = {}
        for learner in learners:
            by_learner[learner] = {}
            for other in baselines:
                d = result.difference(learner, other, size)
                by_learner[learner][other] = {"difference": round(d.mean, 4), "ci95": round(d.half_width, 4)}
        out.append({"support": size, "units": len(result.units), "learners": learners, "methods": methods,
                    "paired": by_learner[learners[0]] if learners else {}, "paired_by_learner": by_learner})
    return out


def estimate_text(entry: dict | None) -> str:
    """``.208 [.175, .241]``: a dAUPRC with its 95% interval."""
    if not entry:
        return "-"
    return f"{entry['dauprc']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _learners(entry: dict) -> list[str]:
    return entry.get("learners") or [LEARNER]


def difference_text(entry: dict, other: str, learner: str | None = None) -> str:
    """``learner`` (None: the first) minus baseline ``other`` at this support size, with its 95% half-width."""
    by = entry.get("paired_by_learner")
    paired = (by or {}).get(learner, {}).get(other) if learner is not None and by else entry.get("paired", {}).get(other)
    return "-" if paired is None else f"{paired['difference']:+.3f} ± {paired['ci95']:.3f}"


def compound_lines(models: list[dict]) -> list[str]:
    """One line per target task set of a run: each trained model and each baseline at the gate's support size
    (a baseline with each model minus it), and what was published (a model, or a baseline because it won)."""
    lines = []
    for m in models:
        published = m["published"]
        gate = next((e for e in m["evaluation"] if e["support"] == m.get("gate_support")), m["evaluation"][0])
        learners = _learners(gate)
        mine = ", ".join(f"{learner} {estimate_text(gate['methods'].get(learner))}" for learner in learners)
        others = ", ".join(f"{b} {estimate_text(v)} ("
                           + "; ".join(f"{learner} {difference_text(gate, b, learner)}" for learner in learners) + ")"
                           for b, v in gate["methods"].items() if b not in learners)
        what = (f"the meta-learner {published['published']}" if not published.get("baseline")
                else f"the baseline {published['published']} (it beat the meta-learners)")
        lines.append(f"compounds on {m['taskset']} ({'trained' if m['trained'] else 'unchanged'}, {m['steps']} steps, "
                     f"{m['device']}): S={gate['support']} dAUPRC {mine}; baselines {others} -> {published['ref']} is "
                     f"{what} (gate: {published['decision']}{', already published' if published.get('cached') else ''})")
    return lines


def compound_markdown(models: list[dict]) -> list[str]:
    """The summary artifact's section for compound-activity models (empty without any)."""
    if not models:
        return []
    out = ["", "## Compound activity models against the baselines", "",
           "dAUPRC on the test tasks (FS-Mol protocol, the same draws for every method) with its 95% interval; "
           "*model − X*: the paired difference per (task, split) unit.", "",
           "| task set | support | meta-learners | baselines | each meta-learner − each baseline | published |",
           "|---|---:|---|---|---|---|"]
    for m in models:
        published = m["published"]
        what = (f"meta-learner {published['published']}" if not published.get("baseline")
                else f"baseline {published['published']}")
        for e in m["evaluation"]:
            learners = _learners(e)
            mine = "; ".join(f"{learner} {estimate_text(e['methods'].get(learner))}" for learner in learners)
            others = "; ".join(f"{b} {estimate_text(v)}" for b, v in e["methods"].items() if b not in learners)
            diffs = "; ".join(f"{learner} − {b} {difference_text(e, b, learner)}"
                              for learner in learners for b in e["methods"] if b not in learners)
            out.append(f"| {m['taskset']} | {e['support']} | {mine} | {others} | {diffs} | "
                       f"`{published['ref']}` ({what}, {published['decision']}) |")
    return out
