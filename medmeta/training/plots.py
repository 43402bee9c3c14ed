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
    """Meta-training loss per step on a log scale (the first steps' losses, often 100 times the
    later ones, no longer flatten the rest), with its running mean; meta-train and meta-validation
    accuracy on their own axis (0 to 1) beside it."""
    plt = _figure(home)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    history = [h for h in result["history"] if h.get("loss") is not None]
    steps = [h["step"] for h in history]
    losses = [float(h["loss"]) for h in history]
    positive = [v for v in losses if v > 0]
    if positive:
        floor = min(positive)
        ax_loss.plot(steps, [max(v, floor) for v in losses], lw=0.8, alpha=0.45, label="per step")
        window = max(1, len(losses) // 20)
        if window > 1:
            ax_loss.plot(steps, [max(v, floor) for v in _running_median(losses, window)], lw=1.6,
                         label=f"median of {window} steps")
        ax_loss.set_yscale("log")
        top = _loss_axis_top(losses)
        if top is not None:
            ax_loss.set_ylim(floor / 1.2, top)
            off = [(s, v) for s, v in zip(steps, losses) if v > top]
            ax_loss.annotate(f"{len(off)} early step{'s' if len(off) > 1 else ''} off the scale "
                             f"(max {max(v for _, v in off):.3g})", xy=(0.98, 0.97), xycoords="axes fraction",
                             ha="right", va="top", fontsize=8, color="grey")
        if window > 1:
            ax_loss.legend(loc="lower left", fontsize=8)
    ax_loss.set(xlabel="meta-step", ylabel="meta-train loss (log scale)",
                title=f"{result['algorithm']} on {result['taskset']}"[:60])
    ax_loss.grid(True, which="major", lw=0.4, alpha=0.5)
    if any(h.get("accuracy") is not None for h in history):
        ax_acc.plot([h["step"] for h in history if h.get("accuracy") is not None],
                    [h["accuracy"] for h in history if h.get("accuracy") is not None], lw=1, alpha=0.5,
                    label="meta-train")
    val = [v for v in result["validations"] if v.get("accuracy") is not None]
    if val:
        ax_acc.plot([v["step"] for v in val], [v["accuracy"] for v in val], "o-", label="meta-validation")
    ax_acc.set(xlabel="meta-step", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    ax_acc.grid(True, lw=0.4, alpha=0.5)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _running_median(values: list[float], window: int) -> list[float]:
    """The median of each value and the ``window - 1`` before it (fewer at the start): robust to
    the few huge losses of the first steps, unlike a mean."""
    import statistics

    return [statistics.median(values[max(0, i + 1 - window):i + 1]) for i in range(len(values))]


def _loss_axis_top(losses: list[float]) -> float | None:
    """The loss axis' upper end when the first steps' losses would flatten the rest: twice the
    largest loss after the first tenth of the steps; None when every loss fits under it."""
    later = [v for v in losses[max(1, len(losses) // 10):] if v > 0]
    if len(later) < 5:
        return None
    top = 2 * max(later)
    return top if max(losses) > top else None


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
