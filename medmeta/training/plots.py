"""The PNGs people look at: a training curve, and accuracy against shots with the baselines.

matplotlib writes a font cache on first use; ``home`` (given by the callers, which know it) keeps it
in ``H/cache/matplotlib`` (``medmeta.tool_caches``) when matplotlib is not yet imported, so nothing
lands in ``~/.cache``, whoever started the flow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from medmeta.atomic import atomic_path
from medmeta.home import Home


def _figure(home: Home | None):
    if home is not None and "matplotlib" not in sys.modules:
        from medmeta.tool_caches import keep_caches_in

        keep_caches_in(home.root)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(result: dict, path: Path, home: Home | None = None) -> Path:
    """Meta-training loss (and accuracy) per step, meta-validation accuracy per validation."""
    plt = _figure(home)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [h["step"] for h in result["history"]]
    ax_loss.plot(steps, [h["loss"] for h in result["history"]], lw=1)
    ax_loss.set(xlabel="meta-step", ylabel="meta-train loss", title=f"{result['algorithm']} on {result['taskset']}")
    if any(h.get("accuracy") is not None for h in result["history"]):
        ax_acc.plot(steps, [h["accuracy"] for h in result["history"]], lw=1, alpha=0.6, label="meta-train")
    val = [v for v in result["validations"] if v.get("accuracy") is not None]
    if val:
        ax_acc.plot([v["step"] for v in val], [v["accuracy"] for v in val], "o-", label="meta-validation")
    ax_acc.set(xlabel="meta-step", ylabel="accuracy", ylim=(0, 1))
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, plt, path)


def accuracy_against_shots(evaluation: dict, path: Path, home: Home | None = None) -> Path:
    """Meta-test accuracy (95% CI) against shots, per method."""
    plt = _figure(home)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    by_method: dict[str, list[tuple[int, float, float]]] = {}
    for entry in evaluation["by_shots"]:
        for row in entry["rows"]:
            by_method.setdefault(row["method"], []).append((entry["shots"], row["mean"], row["ci95"]))
    for method, points in by_method.items():
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=method)
    ax.set(xlabel="shots (labelled cases per class)", ylabel="meta-test accuracy", ylim=(0, 1),
           xticks=sorted({e["shots"] for e in evaluation["by_shots"]}), title=evaluation["model"][:60])
    ax.axhline(1 / evaluation["ways"], color="grey", lw=0.8, ls=":", label="chance")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
