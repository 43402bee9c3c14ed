"""Research harness for issue 15 item 4: the activity meta-learners of ``metalearn/activity.py`` against
RandomForest on the FS-Mol protocol over the 30 MoleculeACE tables, side by side, on the SAME draws.

Protocol (/work/helpers/issue15.md): 20 meta-train / 10 meta-test tasks split by group (ChEMBL target id),
split seeds 0, 1, 2; support sizes 16/32/64 (S/2 actives + S/2 inactives), 10 draws per test task, query =
every other compound; label = pActivity >= task median (pActivity = y + 9); metric dAUPRC; a unit = (test task,
split seed), its value the mean over its draws; mean and 95% t-CI over the 30 units; paired difference against RF
per unit. The data loading, protocol and RF here are deliberately small: the lead folds them into
bench/molecules.py (medmeta.chem.protocol / features / baselines) and deletes the duplicates.

Methods: ``rf`` = RandomForest (sklearn, 100 trees, ECFP4 2048 bits, support only); ``gp_*`` = metalearn.activity.
ActivityGP on the named fingerprint (``bits`` = ECFP4 2048 bits, ``counts`` = ECFP4 counts, ``multi`` = ECFP4 |
atom pairs | torsions | FCFP4 bits (2048 each) | MACCS (167), one Tanimoto kernel per block); ``_fixed`` = its
starting hyperparameters (nothing learned), ``_meta`` = noise and block weights meta-learned on the 20 training
tasks (150 steps of 8 episodes); ``_mean`` / ``_dkt`` / ``_weighted`` / ``_sharpen`` / ``_probit`` = the options of
ActivityGP (prior mean, deep-kernel MLP, per-bit weights, Tanimoto exponent, mean/sd scores);
``rf+X`` = the average of RF's and X's query ranks (weight 0.5, not learned).

Full protocol, 2026-12-04, this 2-core machine shared with three other helpers, torch 1 thread:
    PYTHONPATH=. python bench/molecules_learner.py \
        --methods rf,gp_bits_fixed,gp_bits_meta,gp_multi_fixed,gp_multi_meta,rf+gp_multi_meta
    units: 30, wall 535 s, load average 5.0 at start, 4.5 at end
| method | S=16 | S=32 | S=64 | vs RF S=16 | vs RF S=32 | vs RF S=64 | meta-train s (per split) | score ms/draw |
|---|---|---|---|---|---|---|---|---|
| rf | 0.193 +- 0.032 | 0.231 +- 0.031 | 0.272 +- 0.028 | - | - | - | 0.0 | 243.8 |
| gp_bits_fixed | 0.204 +- 0.032 | 0.237 +- 0.031 | 0.276 +- 0.028 | +0.011 +- 0.003 | +0.006 +- 0.002 | +0.004 +- 0.002 | 0.4 | 17.8 |
| gp_bits_meta | 0.204 +- 0.032 | 0.236 +- 0.031 | 0.276 +- 0.028 | +0.011 +- 0.003 | +0.006 +- 0.002 | +0.004 +- 0.002 | 7.4 | 17.2 |
| gp_multi_fixed | 0.205 +- 0.033 | 0.242 +- 0.030 | 0.281 +- 0.027 | +0.012 +- 0.005 | +0.011 +- 0.004 | +0.009 +- 0.003 | 0.0 | 103.8 |
| gp_multi_meta | 0.208 +- 0.033 | 0.245 +- 0.030 | 0.284 +- 0.027 | +0.015 +- 0.004 | +0.014 +- 0.003 | +0.012 +- 0.003 | 19.9 | 100.0 |
| rf+gp_multi_meta | 0.206 +- 0.032 | 0.242 +- 0.031 | 0.283 +- 0.027 | +0.013 +- 0.002 | +0.012 +- 0.002 | +0.011 +- 0.002 | 0.0 | nan |
(meta-train and scoring times are wall seconds on the loaded machine; fingerprints came from the .npy cache.)

Second full run, the options that were tried (same draws: rf and gp_multi_* repeat the run above exactly):
    PYTHONPATH=. python bench/molecules_learner.py --methods rf,gp_multi_fixed,gp_multi_meta,gp_counts_meta,\
        gp_bits_mean,gp_bits_dkt,gp_bits_weighted,gp_bits_sharpen,gp_bits_probit --save bench-data/runs/full2.json
    units: 30, wall 1049 s, load average 1.9 at start, 3.9 at end (5-6 in between)
|---|---|---|---|---|---|---|---|---|
| rf | 0.193 +- 0.032 | 0.231 +- 0.031 | 0.272 +- 0.028 | - | - | - | 0.0 | 217.9 |
| gp_multi_fixed | 0.205 +- 0.033 | 0.242 +- 0.030 | 0.281 +- 0.027 | +0.012 +- 0.005 | +0.011 +- 0.004 | +0.009 +- 0.003 | 0.0 | 89.1 |
| gp_multi_meta | 0.208 +- 0.033 | 0.245 +- 0.030 | 0.284 +- 0.027 | +0.015 +- 0.004 | +0.014 +- 0.003 | +0.012 +- 0.003 | 24.3 | 89.6 |
| gp_counts_meta | 0.176 +- 0.034 | 0.214 +- 0.031 | 0.258 +- 0.028 | -0.017 +- 0.006 | -0.017 +- 0.005 | -0.014 +- 0.004 | 8.7 | 17.4 |
| gp_bits_mean | 0.167 +- 0.035 | 0.210 +- 0.032 | 0.258 +- 0.028 | -0.026 +- 0.022 | -0.021 +- 0.016 | -0.014 +- 0.009 | 22.4 | 21.3 |
| gp_bits_dkt | 0.118 +- 0.034 | 0.142 +- 0.036 | 0.187 +- 0.033 | -0.075 +- 0.022 | -0.089 +- 0.020 | -0.085 +- 0.017 | 65.7 | 39.8 |
| gp_bits_weighted | 0.204 +- 0.032 | 0.237 +- 0.031 | 0.276 +- 0.028 | +0.011 +- 0.003 | +0.006 +- 0.002 | +0.004 +- 0.002 | 41.2 | 20.6 |
| gp_bits_sharpen | 0.205 +- 0.032 | 0.238 +- 0.031 | 0.277 +- 0.028 | +0.012 +- 0.003 | +0.007 +- 0.002 | +0.005 +- 0.002 | 9.0 | 14.6 |
| gp_bits_probit | 0.205 +- 0.032 | 0.237 +- 0.031 | 0.276 +- 0.028 | +0.011 +- 0.003 | +0.006 +- 0.002 | +0.004 +- 0.002 | 11.3 | 17.0 |
Paired, same units: gp_multi_meta - gp_multi_fixed = +0.003 +- 0.002 / +0.003 +- 0.002 / +0.003 +- 0.001
(what meta-learning the six numbers adds); the rest of the gain over RF is the kernel on raw fingerprints.
Learned on split 0: block weights ECFP4 .47, atom pairs .36, torsions .17, FCFP4 .17, MACCS .03 (start .2 each),
noise .76 (start .5). gp_bits_dkt's query loss falls to 0.09 on the training tasks: it memorises them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the metalearn package, not bench/metalearn.py beside this file
CACHE = ROOT / "bench-data" / "molecules_cache"
N_BITS = 2048


# ----------------------------------------------------------------------------------------------- data
def _featurise(smiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ECFP4 (Morgan radius 2) 2048 bits and counts (clipped to 255), uint8 (n, 2048) each."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=N_BITS)
    bits = np.zeros((len(smiles), N_BITS), np.uint8)
    counts = np.zeros((len(smiles), N_BITS), np.uint8)
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise ValueError(f"row {i}: SMILES does not parse")
        bits[i] = gen.GetFingerprintAsNumPy(mol)
        counts[i] = np.minimum(gen.GetCountFingerprintAsNumPy(mol), 255)
    return bits, counts


EXTRA_KINDS = ("ap", "tt", "fcfp", "maccs")


def _featurise_extra(smiles: list[str]) -> dict[str, np.ndarray]:
    """Atom-pair, topological-torsion and FCFP4 bits (2048 each) and MACCS keys (167), uint8."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    gens = {"ap": rdFingerprintGenerator.GetAtomPairGenerator(fpSize=N_BITS),
            "tt": rdFingerprintGenerator.GetTopologicalTorsionGenerator(fpSize=N_BITS),
            "fcfp": rdFingerprintGenerator.GetMorganGenerator(
                radius=2, fpSize=N_BITS, atomInvariantsGenerator=rdFingerprintGenerator.GetMorganFeatureAtomInvGen())}
    out = {k: np.zeros((len(smiles), N_BITS), np.uint8) for k in gens}
    out["maccs"] = np.zeros((len(smiles), 167), np.uint8)
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi)
        for k, g in gens.items():
            out[k][i] = g.GetFingerprintAsNumPy(mol)
        out["maccs"][i] = np.array(list(MACCSkeys.GenMACCSKeys(mol)), np.uint8)
    return out


def load_tasks() -> dict[str, dict[str, np.ndarray]]:
    """Every table as {"bits", "counts", "p"} (pActivity = y + 9), fingerprints cached as .npy in CACHE."""
    import csv

    from medmeta.chem.moleculeace import table_names, tables_dir

    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in table_names():
        with open(tables_dir() / f"{name}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        p = np.array([float(r["y"]) + 9.0 for r in rows])
        bits_f, counts_f = CACHE / f"{name}.bits.npy", CACHE / f"{name}.counts.npy"
        if not (bits_f.exists() and counts_f.exists()):
            bits, counts = _featurise([r["smiles"] for r in rows])
            np.save(bits_f, bits)
            np.save(counts_f, counts)
        out[name] = {"bits": np.load(bits_f), "counts": np.load(counts_f), "p": p}
        if os.environ.get("BENCH_EXTRA", "1") == "1":
            if not all((CACHE / f"{name}.{k}.npy").exists() for k in EXTRA_KINDS):
                for k, v in _featurise_extra([r["smiles"] for r in rows]).items():
                    np.save(CACHE / f"{name}.{k}.npy", v)
            for k in EXTRA_KINDS:
                out[name][k] = np.load(CACHE / f"{name}.{k}.npy")
    return out


# ------------------------------------------------------------------------------------------- protocol
def group_of(task: str) -> str:
    return task.split("_")[0]


def split_tasks(tasks: list[str], seed: int, n_test: int = 10) -> dict[str, list[str]]:
    """Groups shuffled by the seed; test takes whole groups until it holds n_test tasks."""
    groups = sorted({group_of(t) for t in tasks})
    order = np.random.default_rng(seed).permutation(len(groups))
    test: list[str] = []
    for gi in order:
        members = [t for t in sorted(tasks) if group_of(t) == groups[gi]]
        if len(test) + len(members) <= n_test:
            test += members
        if len(test) == n_test:
            break
    return {"train": [t for t in sorted(tasks) if t not in test], "test": sorted(test)}


def labels_of(p: np.ndarray) -> np.ndarray:
    return (p >= np.median(p)).astype(np.int64)


def draw_rng(split_seed: int, task: str, size: int, draw: int) -> np.random.Generator:
    return np.random.default_rng([split_seed, zlib.crc32(task.encode()), size, draw])


def draw(labels: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    support = np.concatenate([rng.choice(pos, size // 2, replace=False), rng.choice(neg, size // 2, replace=False)])
    query = np.setdiff1d(np.arange(len(labels)), support)
    return support, query


def delta_auprc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, scores) - y.mean())


def mean_ci(values) -> tuple[float, float]:
    from scipy import stats

    v = np.asarray(values, float)
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


# ------------------------------------------------------------------------------------------- methods
def random_forest(support_x, support_y, query_x, seed):
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    rf.fit(support_x, support_y)
    return rf.predict_proba(query_x)[:, 1]


def _rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable") / max(len(v) - 1, 1)


# name -> (fingerprint kind, ActivityGP kwargs, meta-train steps); steps 0 = untrained (the fixed start point)
LEARNERS = {
    "gp_bits_fixed": ("bits", {}, 0),
    "gp_counts_fixed": ("counts", {}, 0),
    "gp_bits_meta": ("bits", {}, 150),
    "gp_counts_meta": ("counts", {}, 150),
    "gp_bits_mean": ("bits", {"mean": "linear"}, 300),
    "gp_bits_dkt": ("bits", {"features": 128}, 300),
    "gp_bits_weighted": ("bits", {"bit_weights": True}, 300),
    "gp_bits_sharpen": ("bits", {"sharpen": True}, 150),
    "gp_bits_probit": ("bits", {"probit": True}, 150),
    "gp_multi_fixed": ("bits+ap+tt+fcfp+maccs", {}, 0),
    "gp_multi_meta": ("bits+ap+tt+fcfp+maccs", {}, 150),
    "gp_bits_ap_meta": ("bits+ap", {}, 150),
    "gp_bits_fcfp_meta": ("bits+fcfp", {}, 150),
    "gp_bits_sharpen_probit": ("bits", {"sharpen": True, "probit": True}, 150),
}
# ensembles: name -> (learner name, weight of RF's rank)
ENSEMBLES = {"rf+gp_bits_meta": ("gp_bits_meta", 0.5), "rf+gp_bits_mean": ("gp_bits_mean", 0.5),
             "rf+gp_multi_meta": ("gp_multi_meta", 0.5)}


def run(methods: list[str], seeds: list[int], sizes: list[int], draws: int, log=print) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from metalearn.activity import ActivityGP

    data = load_tasks()
    kinds = {LEARNERS[m][0] for m in methods if m in LEARNERS} | {LEARNERS[e[0]][0] for m, e in ENSEMBLES.items()
                                                                   if m in methods}
    tensors = {(t, kind): torch.as_tensor(np.concatenate([d[k] for k in kind.split("+")], 1), dtype=torch.float32)
               for t, d in data.items() for kind in kinds}
    needed = set(methods) | {ENSEMBLES[m][0] for m in methods if m in ENSEMBLES}
    units: dict[tuple[str, int], dict[tuple[str, int], list[float]]] = {}
    times = {m: {"train": 0.0, "score": 0.0, "n": 0} for m in needed | {"rf"}}
    for seed in seeds:
        split = split_tasks(list(data), seed)
        learners = {}
        for name in sorted(needed):
            if name not in LEARNERS:
                continue
            kind, kwargs, steps = LEARNERS[name]
            start = time.perf_counter()
            blocks = [data[split["train"][0]][k].shape[1] for k in kind.split("+")]
            learner = ActivityGP(sum(blocks), blocks=blocks, seed=seed, **kwargs)
            if steps:
                losses = learner.meta_train([(tensors[(t, kind)], torch.as_tensor(data[t]["p"])) for t in split["train"]],
                                            steps)
                log(f"  split {seed} {name}: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}, noise "
                    f"{learner.log_noise.exp().item():.3f}")
            times[name]["train"] += time.perf_counter() - start
            learners[name] = (kind, learner)
        for task in split["test"]:
            labels = labels_of(data[task]["p"])
            for size in sizes:
                per = {m: [] for m in methods}
                for d in range(draws):
                    s, q = draw(labels, size, draw_rng(seed, task, size, d))
                    got = {}
                    start = time.perf_counter()
                    got["rf"] = random_forest(data[task]["bits"][s], labels[s], data[task]["bits"][q], seed * 1000 + d)
                    times["rf"]["score"] += time.perf_counter() - start
                    times["rf"]["n"] += 1
                    for name, (kind, learner) in learners.items():
                        x = tensors[(task, kind)]
                        start = time.perf_counter()
                        got[name] = learner.scores(x[s], torch.as_tensor(labels[s]), x[q]).numpy()
                        times[name]["score"] += time.perf_counter() - start
                        times[name]["n"] += 1
                    for name, (base, w) in ENSEMBLES.items():
                        if name in methods:
                            got[name] = w * _rank(got["rf"]) + (1 - w) * _rank(got[base])
                    for m in methods:
                        per[m].append(delta_auprc(labels[q], got[m]))
                units[(task, seed)] = units.get((task, seed), {})
                for m in methods:
                    units[(task, seed)][(m, size)] = float(np.mean(per[m]))
        log(f"split {seed} done")
    return {"units": units, "times": times}


def table(result: dict, methods: list[str], sizes: list[int]) -> str:
    units, times = result["units"], result["times"]
    head = "| method | " + " | ".join(f"S={s}" for s in sizes) + " | " + " | ".join(
        f"vs RF S={s}" for s in sizes) + " | meta-train s (per split) | score ms/draw |"
    lines = [head, "|" + "---|" * (2 * len(sizes) + 3)]
    n_splits = len({seed for _, seed in units})
    for m in methods:
        cells = []
        for s in sizes:
            mean, hw = mean_ci([u[(m, s)] for u in units.values()])
            cells.append(f"{mean:.3f} +- {hw:.3f}")
        for s in sizes:
            if m == "rf":
                cells.append("-")
                continue
            mean, hw = mean_ci([u[(m, s)] - u[("rf", s)] for u in units.values()])
            cells.append(f"{mean:+.3f} +- {hw:.3f}")
        t = times.get(m, {"train": 0, "score": 0, "n": 0})
        score = 1000 * t["score"] / t["n"] if t["n"] else float("nan")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {t['train'] / n_splits:.1f} | {score:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="rf," + ",".join(LEARNERS) + "," + ",".join(ENSEMBLES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="16,32,64")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--save", help="write the per-unit values as JSON here (for further paired differences)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    seeds, sizes = [int(v) for v in args.seeds.split(",")], [int(v) for v in args.sizes.split(",")]
    load0 = os.getloadavg()
    start = time.perf_counter()
    result = run(methods, seeds, sizes, args.draws, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"command: python bench/molecules_learner.py {' '.join(argv or sys.argv[1:])}")
    print(f"units: {len(result['units'])}, wall {time.perf_counter() - start:.0f} s, load average "
          f"{load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, torch threads "
          f"{os.environ.get('BENCH_THREADS', '1')}")
    print(table(result, methods, sizes))
    if args.save:
        import json

        Path(args.save).write_text(json.dumps({f"{t}|{seed}": {f"{m}|{s}": v for (m, s), v in u.items()}
                                               for (t, seed), u in result["units"].items()}, indent=1))


if __name__ == "__main__":
    main()
