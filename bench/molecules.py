"""Few-shot compound activity on the 30 MoleculeACE ChEMBL tables (issue 15): the field's baselines and
ProtoNet on the FS-Mol protocol (medmeta.chem.protocol), every method on the same draws (the loop is
medmeta.chem.evaluation.run_protocol, which the pipeline's evaluation shares).

    python bench/molecules.py [--draws 10] [--seeds 0 1 2] [--sizes 16 32 64] [--methods rf ...]
                              [--protonet-steps 1000] [--out BENCHMARKS.md]

Protocol: 20 meta-train / 10 meta-test tasks split by ChEMBL target (split seeds 0, 1, 2), label =
pActivity >= the task's median, support S/2 actives + S/2 inactives drawn by (split seed, task, S, draw),
the query every other compound, dAUPRC; a unit = (test task, split seed), its value the mean over its
draws; mean +- 95% t-interval over the 30 units, and each method's paired difference against RF.

Adding a method is one entry in ``METHODS``:

    METHODS["name"] = Method(featuriser, prepare, note)

- ``featuriser``: a name in ``medmeta.chem.features.FEATURISERS`` (``"ecfp4_bits"``...); the bench
  hands the method that featuriser's rows (numpy, one row per compound).
- ``prepare(train_tasks, seed) -> scorer``: called once per split with the split's meta-training tasks,
  a list of ``TrainTask(name, x, y)`` (x: features, y: 0/1 labels, numpy), and the split seed; it may
  meta-train (baselines ignore the tasks). The time it takes is reported as the method's training time.
- ``scorer(support_x, support_y, query_x, seed) -> scores`` (numpy ``(n_query,)``, higher = more
  likely active): called once per draw; ``seed`` is the draw's index. The time is reported as scoring.
- ``note``: one line for the report (what the method is, its settings).

A torch meta-learner with ``meta_train(tasks: list[(Tensor x, Tensor y)])`` and
``scores(support_x, support_y, query_x) -> Tensor`` plugs in through ``learner_method(build)``, where
``build(seed)`` returns a fresh learner: ``METHODS["activity"] = learner_method(lambda seed: ..., note=...)``.

The data is read by ``load_tables`` (one small function: RDKit canonical SMILES, pActivity = y + 9,
duplicates after canonicalisation averaged); features come from ``FeatureCache`` (``--cache``), so a
rerun does not recompute them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package
from _report import load_average, machine, revision, write_section  # noqa: E402  (bench/_report.py)

from medmeta.chem.baselines import KNN_K, LR_C, RF_TREES  # noqa: E402
from medmeta.chem.evaluation import (Method, Scorer, Split, TrainTask, baseline_method,  # noqa: E402,F401
                                     learner_method, run_protocol)
from medmeta.chem.protocol import (SPLIT_SEEDS, SUPPORT_SIZES, N_DRAWS, draw, labels_of, mean_ci,  # noqa: E402
                                   paired, split_tasks)

SECTION = "molecules"

# The issue's figures (mean, half-width at S = 16, 32, 64), for the comparison line.
ISSUE_FIGURES = {
    "rf": ((.194, .033), (.232, .032), (.273, .026)),
    "logistic_regression": ((.200, .033), (.233, .030), (.268, .026)),
    "protonet_trained": ((.119, .036), (.124, .037), (.144, .037)),
    "protonet_untrained": ((.164, None), (.195, None), (.221, None)),
}


# ---------------------------------------------------------------- data


def load_tables(names: list[str] | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
    """Task name -> (canonical SMILES, pActivity) of the MoleculeACE tables (all 30 by default).
    pActivity = y + 9 (y = -log10 of the value in nM); a SMILES written twice is one compound, its mean
    pActivity. (The lead switches this to medmeta's ingest + ``tasks build --by target``.)"""
    import pandas as pd
    from rdkit import Chem, RDLogger

    from medmeta.chem.moleculeace import table_names, tables_dir

    RDLogger.DisableLog("rdApp.*")
    out = {}
    for name in names or table_names():
        table = pd.read_csv(tables_dir() / f"{name}.csv", usecols=["smiles", "y"])
        table["smiles"] = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in table["smiles"]]
        mean = table.groupby("smiles", sort=True)["y"].mean()
        out[name] = (list(mean.index), mean.to_numpy() + 9.0)
    return out


# ---------------------------------------------------------------- methods


@dataclass
class ProtoNetSettings:
    steps: int = 500
    tasks_per_step: int = 8
    query_per_class: int = 32
    lr: float = 1e-3


def protonet_method(settings: ProtoNetSettings | None) -> Method:
    """metalearn's ProtoNet (euclidean) over an MLP 2048-512-128 (ReLU after each layer): meta-trained
    with Adam when ``settings`` is given, else the seeded random encoder untouched. Score = logit of
    active - logit of inactive."""
    def prepare(train: list[TrainTask], seed: int) -> Scorer:
        import torch

        from metalearn.backbones import MLP
        from metalearn.episodes import Episodes
        from metalearn.metric import ProtoNet

        torch.manual_seed(seed)
        learner = ProtoNet(MLP(train[0].x.shape[1], (512, 128)), n_way=2)
        if settings is not None:
            rng = np.random.default_rng([seed, 2024])
            optimiser = torch.optim.Adam(learner.parameters(), lr=settings.lr)
            for _ in range(settings.steps):
                support_size = int(rng.choice(SUPPORT_SIZES))
                episodes = [_episode(train[int(rng.integers(len(train)))], support_size, settings.query_per_class, rng)
                            for _ in range(settings.tasks_per_step)]
                batch = Episodes(*(torch.stack([torch.as_tensor(e[i]) for e in episodes]) for i in range(4)), n_way=2)
                learner.meta_step(batch)
                optimiser.step()
        learner.eval()

        def score(support_x, support_y, query_x, draw_seed):
            with torch.no_grad():
                logits = learner.adapt(torch.as_tensor(support_x, dtype=torch.float32),
                                       torch.as_tensor(support_y, dtype=torch.int64))(
                    torch.as_tensor(query_x, dtype=torch.float32))
            return (logits[:, 1] - logits[:, 0]).double().numpy()

        return score

    if settings is None:
        note = "metalearn ProtoNet (euclidean), MLP 2048-512-128, seeded random init, no training"
    else:
        note = (f"metalearn ProtoNet (euclidean), MLP 2048-512-128, meta-trained: {settings.steps} Adam steps "
                f"(lr {settings.lr}), {settings.tasks_per_step} episodes a step from the 20 training tasks, "
                f"S drawn from {SUPPORT_SIZES}, {settings.query_per_class} + {settings.query_per_class} queries")
    return Method("ecfp4_bits", prepare, note)


def _episode(task: TrainTask, support_size: int, query_per_class: int, rng: np.random.Generator):
    """One balanced training episode of a task: float32 support/query features, int64 labels."""
    support, rest = draw(task.y, support_size, rng)
    query = np.concatenate([rng.choice(rest[task.y[rest] == c], query_per_class, replace=False) for c in (0, 1)])
    return (task.x[support].astype(np.float32), task.y[support], task.x[query].astype(np.float32), task.y[query])


METHODS: dict[str, Method] = {
    "rf": baseline_method("rf", f"scikit-learn RandomForestClassifier, {RF_TREES} trees, defaults otherwise, on "
                                "the support's ECFP4 bits; score = P(active)"),
    "logistic_regression": baseline_method("logistic_regression", f"L2 logistic regression, C = {LR_C} (no "
                                           "per-task tuning), lbfgs, on ECFP4 bits; score = P(active)"),
    "tanimoto_knn": baseline_method("tanimoto_knn", f"the {KNN_K} most Tanimoto-similar support compounds' "
                                    "similarity-weighted fraction of actives (ECFP4 bits)"),
    "protonet_trained": protonet_method(ProtoNetSettings()),
    "protonet_untrained": protonet_method(None),
}


def pipeline_method(algorithm: str) -> Method:
    """The pipeline's episodic compound learner ``algorithm`` (medmeta.chem.episodic, the default settings:
    ``train.backbone.compounds``, ``compounds.episodic``, ``train.learner``), meta-trained on each split's
    training tasks by the pipeline's own training code, without a home."""
    from medmeta.chem.episodic import NAMES, episodic_spec
    from medmeta.chem.episodic import learner_method as episodic_learner
    from medmeta.settings import load_settings

    settings = load_settings()
    compounds, backbone = settings.compounds, settings.train["backbone"]["compounds"]
    episodic = compounds["episodic"]
    identity = {"learner": algorithm, "featuriser": backbone["featuriser"],
                "spec": episodic_spec(algorithm, backbone["featuriser"], backbone, settings.train["learner"].get(algorithm)),
                "episodes": {"support_sizes": list(compounds["support_sizes"]), "query_size": episodic["query_size"],
                             "meta_batch": episodic["meta_batch"]},
                "optimiser": {"name": "adam", "lr": episodic["lr"]}, "steps": episodic["steps"], "seed": 0}
    hidden = "-".join(str(h) for h in backbone["hidden"])
    note = (f"the pipeline's {NAMES[algorithm]} (medmeta.chem.episodic, default settings): MLP "
            f"{backbone['featuriser']}-{hidden}, {episodic['steps']} Adam steps, lr {episodic['lr']}, "
            f"{episodic['meta_batch']} episodes a step, seeded by the split")
    return episodic_learner(identity, note)


METHODS.update({f"{a}_pipeline": pipeline_method(a) for a in ("protonet", "fomaml", "reptile", "matchingnet", "maml")})

# ---------------------------------------------------------------- the protocol run


def run(tables, features: dict[str, dict[str, np.ndarray]], methods: dict[str, Method], seeds, sizes,
        n_draws: int, log=print):
    """dAUPRC per (method, S) -> list of unit values (in unit order), the units, and the seconds spent
    per method in ``prepare`` (training) and in scoring: ``medmeta.chem.evaluation.run_protocol`` on the
    tables split by ``split_tasks`` for each seed."""
    labels = {name: labels_of(p) for name, (_, p) in tables.items()}
    splits = []
    for seed in seeds:
        split = split_tasks(list(tables), seed)
        splits.append(Split(seed, tuple(split["train"]), tuple(split["test"])))
    result = run_protocol(labels, features, splits, methods, sizes, n_draws, log=log)
    return result.values, result.units, result.seconds


def report(values, units, seconds, methods, sizes, n_draws, seeds, feature_seconds, feature_note, total, command,
           load_before) -> str:
    def cell(v):
        mean, half = mean_ci(v)
        return f"{mean:.3f} ± {half:.3f}"

    head = "| method | " + " | ".join(f"S={s}" for s in sizes) + " | training s | scoring s |"
    rule = "|---|" + "---:|" * (len(sizes) + 2)
    rows = [f"| {m} | " + " | ".join(cell(values[(m, s)]) for s in sizes)
            + f" | {seconds[m]['train']:.0f} | {seconds[m]['score']:.0f} |" for m in methods]
    lines = [head, rule, *rows]
    if "rf" in methods:
        lines += ["", "Paired difference against RF (per unit, mean ± 95% CI; above zero = better than RF):", "",
                  "| method | " + " | ".join(f"S={s}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for m in methods:
            if m != "rf":
                lines.append(f"| {m} − rf | " + " | ".join(
                    "{:+.3f} ± {:.3f}".format(*paired(values[(m, s)], values[("rf", s)])) for s in sizes) + " |")
    checks = []
    for m in ("rf", "logistic_regression"):
        if m in methods and tuple(sizes) == SUPPORT_SIZES:
            for s, (ref, ref_half) in zip(sizes, ISSUE_FIGURES[m]):
                mean, half = mean_ci(values[(m, s)])
                verdict = "**pass**" if abs(mean - ref) <= ref_half else "**FAIL**"
                checks.append(f"- {m} S={s}: {mean:.3f} ± {half:.3f} against the issue's {ref:.3f} ± {ref_half:.3f} "
                              f"(difference {mean - ref:+.3f}; within the issue's interval: {verdict})")
    notes = [f"- `{m}`: {methods[m].note}" for m in methods]
    reduced = "" if (n_draws, tuple(seeds)) == (N_DRAWS, SPLIT_SEEDS) else (
        f" **Reduced run** ({n_draws} draws, split seeds {list(seeds)}); the full protocol is "
        f"`python bench/molecules.py --out BENCHMARKS.md`.")
    return "\n".join([
        "## Few-shot compound activity: MoleculeACE's 30 ChEMBL tables, FS-Mol protocol (issue 15)",
        "",
        f"`{command}` on {machine()}; medmeta at {revision(ROOT, ('medmeta/chem', 'bench/molecules.py'))}. "
        f"Load average {load_before} before, {load_average()} after ({total:.0f} s in all; the 2 cores are "
        f"shared with other developers' jobs, so the seconds below are upper bounds).{reduced}",
        "",
        f"Protocol (`medmeta/chem/protocol.py`): 20 meta-train / 10 meta-test tasks by ChEMBL target, split seeds "
        f"{list(seeds)}, support S/2 actives + S/2 inactives, {n_draws} draws per test task (every method on the "
        f"same draws), query = every other compound, label = pActivity ≥ the task's median, dAUPRC = average "
        f"precision − fraction of positives; mean ± 95% t-interval over the {len(units)} (task, split) units. "
        f"ECFP4 = Morgan radius 2, 2048 bits (RDKit `rdFingerprintGenerator`), computed once per compound "
        f"({feature_seconds:.0f} s this run: {feature_note}). "
        f"Training s = meta-training over all splits; scoring s = every draw's fit (baselines) and scoring.",
        "",
        *lines,
        "",
        *notes,
        "",
        "Against the issue's figures (RF and LR must fall within their intervals):",
        *(checks or ["- (not checked: run with all three support sizes)"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=N_DRAWS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SPLIT_SEEDS))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SUPPORT_SIZES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--protonet-steps", type=int, default=ProtoNetSettings.steps)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-data" / "molecules-features",
                        help="the feature cache folder (a rerun reads it)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the results into")
    parser.add_argument("--section", default=SECTION, help="the BENCHMARKS.md section to write (bench:NAME)")
    args = parser.parse_args()

    import torch

    from medmeta.chem.features import FeatureCache

    torch.set_num_threads(args.threads)
    load_before = load_average()
    command = "python bench/molecules.py " + " ".join(sys.argv[1:])
    methods = {m: METHODS[m] for m in args.methods}
    if "protonet_trained" in methods and args.protonet_steps != ProtoNetSettings.steps:
        methods["protonet_trained"] = protonet_method(ProtoNetSettings(steps=args.protonet_steps))
    started = time.perf_counter()
    tables = load_tables()
    cache = FeatureCache(args.cache)
    start = time.perf_counter()
    features = {f: {name: cache.get(f, smiles) for name, (smiles, _) in tables.items()}
                for f in {m.featuriser for m in methods.values()}}
    feature_seconds = time.perf_counter() - start
    print(f"{len(tables)} tables, {sum(len(s) for s, _ in tables.values())} compounds; features in "
          f"{feature_seconds:.1f} s ({cache.computed or 'all from the cache'})", flush=True)
    values, units, seconds = run(tables, features, methods, args.seeds, args.sizes, args.draws,
                                 log=lambda line: print(line, flush=True))
    computed = sum(cache.computed.values())
    feature_note = f"{computed} compound features computed" if computed else "all read from the cache"
    text = report(values, units, seconds, methods, args.sizes, args.draws, args.seeds, feature_seconds, feature_note,
                  time.perf_counter() - started, command, load_before)
    print(text)
    if args.out:
        write_section(args.out, args.section, text)


if __name__ == "__main__":
    main()
