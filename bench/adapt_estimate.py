"""What an adapted model's leave-one-out estimate costs, on a home that ran the demo (`make demo`).

    python bench/adapt_estimate.py --home .medmeta [--out BENCHMARKS.md]

Copies the home's task sets and registry into a temporary home (the given home is only read), then
per adaptation class of each task set whose champion was trained on its build: the seconds to adapt
(``adapted_state``, what is published) and the seconds of ``loo_estimate`` (one adaptation per
support case plus one prediction), and the whole ``adapt_taskset`` (every class adapted, estimated
and published afresh in the copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import load_average, machine, write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".medmeta")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from medmeta import registry
    from medmeta.home import Home
    from medmeta.tasksets.store import list_tasksets, load_taskset
    from medmeta.training.adapt import _gather, adapt_taskset, loo_estimate, plan_adaptations
    from medmeta.training.models import build_learner
    from medmeta.training.publish import registry_name

    load = load_average()
    work = Path(tempfile.mkdtemp(prefix="medmeta-bench-adapt-"))
    for part in ("tasksets", "registry"):
        shutil.copytree(args.home / part, work / part)
    home = Home.at(work)
    rows = []
    for manifest in list_tasksets(home):
        name = manifest["name"]
        try:
            parent = registry.resolve(home, f"{registry_name(name)}@champion")
        except registry.ModelNotFound:
            continue
        tasks = load_taskset(home, name)
        learner = build_learner(parent.card["config"]["spec"])
        learner.load_state_dict(parent.load_weights())
        learner.eval()
        for plan in plan_adaptations(tasks):
            if plan.skipped:
                continue
            started = time.perf_counter()
            torch.manual_seed(0)
            x, y = _gather(tasks, plan.support)
            state = learner.adapted_state(x, y)
            adapt_s = time.perf_counter() - started
            started = time.perf_counter()
            estimate = loo_estimate(learner, tasks, plan, state)
            loo_s = time.perf_counter() - started
            rows.append((name, parent.card["algorithm"], plan.target, len(plan.support), len(plan.held_out),
                         estimate.get("loo_cases", 0), adapt_s, loo_s))
        for model in registry.model_names(home):  # the copy's adapted models: publish them afresh
            if model.startswith(registry_name(name) + "-"):
                shutil.rmtree(work / "registry" / model)
        started = time.perf_counter()
        adapt_taskset(home, name)
        rows.append((name, "adapt_taskset (all classes: estimate, cards, publish)", "", "", "", "", 0.0,
                     time.perf_counter() - started))
    shutil.rmtree(work, ignore_errors=True)
    lines = [f"`python bench/adapt_estimate.py --home {args.home}` on {machine()}; load average before: {load}; "
             "torch 1 thread.", "",
             "| task set | model | class | support cases | held-out cases | estimate based on | adapt s | estimate s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {a} | {c} | {s} | {h} | {n} | {ad:.3f} | {lo:.3f} |" for t, a, c, s, h, n, ad, lo in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_section(args.out, "adapt-estimate", "## Adapted models: the leave-one-out estimate\n\n" + text)


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    main()
