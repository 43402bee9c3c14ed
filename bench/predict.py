"""``medmeta predict`` on 10k to 1M query rows: linear, a million rows in minutes (issue 12).

Each size is the real command in a fresh process (``python -m medmeta.cli predict --json``, its JSON
written to a file and counted), on a 3-way ProtoNet records model published into a temporary home with
the pipeline's records backbone (MLP 64-64) and 13 labs, as `medmeta run` would publish one. Its weights
are freshly initialised: reading, standardising, forwarding and printing cost the same trained or not.
Side by side, as the reference, the duplicate-id check of main before issue 12 (quoted below, quadratic),
timed alone on the same ids up to ``--reference-max`` rows (it is quadratic); with ``--reference-root``
(a checkout of that main) also that checkout's whole ``medmeta predict`` on the same files.

    python bench/predict.py [--rows 10000 20000 40000 100000 1000000] [--reference-max 40000]
                            [--reference-root /path/to/old/main] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _report import load_average, machine, revision, write_section  # noqa: E402  (bench/_report.py)

SECTION = "predict"
MODEL = "bench-records"
LABS = ["14647-2", "14682-9", "14749-6", "1988-5", "2823-3", "29463-7", "2951-2", "6690-2", "718-7", "8302-2",
        "8310-5", "8480-6", "8867-4"]
CLASSES = ["E11.9", "I50.9", "J44.9"]


def quadratic_duplicates(ids: list[str]) -> list[str]:
    """main's duplicate check before issue 12 (medmeta/predict/cases.py, read_cases), verbatim."""
    return sorted({i for i in ids if ids.count(i) > 1})


def publish_model(home: Path) -> None:
    import torch

    from medmeta import registry
    from medmeta.training.models import build_learner

    names = ["age_years", "sex_female", "sex_male", *(f"lab:{c}" for c in LABS), *(f"missing:{c}" for c in LABS)]
    mean = [60.0, 0.0, 0.0, *([10.0] * len(LABS)), *([0.0] * len(LABS))]
    std = [15.0, 1.0, 1.0, *([3.0] * len(LABS)), *([1.0] * len(LABS))]
    spec = {"algorithm": "protonet", "backbone": {"name": "mlp", "config": {"in_features": len(names),
                                                                            "hidden": [64, 64]}},
            "learner": {}, "n_way": len(CLASSES), "kind": "disease", "inputs": "records",
            "features": {"record": {"names": names, "mean": mean, "std": std}}}
    torch.manual_seed(0)
    registry.publish(home, MODEL, build_learner(spec).state_dict(),
                     {"algorithm": "protonet", "metrics": {"accuracy": 0.5}, "evaluation_id": "ev-bench",
                      "config": {"spec": spec}})


def write_cases(path: Path, rows: int, seed: int, labelled: bool) -> list[str]:
    """A CSV of ``rows`` cases (id, [label,] age_years, sex, 13 labs, 1 in 8 empty); returns the ids."""
    rng = np.random.default_rng(seed)
    ids = [f"p{seed}-{n:07d}" for n in range(rows)]
    ages = rng.integers(18, 95, rows)
    sexes = rng.choice(["female", "male"], rows)
    labs = np.round(rng.normal(10, 3, (rows, len(LABS))), 2).astype(str)
    labs[rng.random((rows, len(LABS))) < 0.125] = ""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *(["label"] if labelled else []), "age_years", "sex", *(f"lab:{c}" for c in LABS)])
        for n in range(rows):
            writer.writerow([ids[n], *([CLASSES[n % len(CLASSES)]] if labelled else []), ages[n], sexes[n], *labs[n]])
    return ids


def run_predict(checkout: Path, home: Path, support: Path, query: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of ``medmeta predict --json`` from ``checkout`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out, "wb") as stdout:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "medmeta.cli", "predict", "--home", str(home), "--model",
                                  MODEL, "--support", str(support), "--query", str(query), "--json"],
                                 stdout=stdout, stderr=subprocess.PIPE, cwd=checkout, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"medmeta predict ({checkout}) failed:\n{child.stderr.read().decode()[-3000:]}")
    child.stderr.close()
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 20_000, 40_000, 100_000, 1_000_000])
    parser.add_argument("--reference-max", type=int, default=40_000, help="the largest size the reference runs at")
    parser.add_argument("--reference-root", type=Path, default=None,
                        help="a checkout of main before issue 12, to time its whole medmeta predict too")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="medmeta-bench-predict-") as scratch:
        scratch = Path(scratch)
        home = scratch / "home"
        publish_model(home)
        support = scratch / "support.csv"
        write_cases(support, 15, seed=1, labelled=True)
        results = []
        for rows in sorted(set(args.rows)):
            query = scratch / f"query-{rows}.csv"
            ids = write_cases(query, rows, seed=2, labelled=False)
            row = {"rows": rows, "csv_mib": query.stat().st_size / 1024**2}
            row["seconds"], row["peak_mib"] = run_predict(ROOT, home, support, query, scratch / "out.json")
            with open(scratch / "out.json") as fh:
                predicted = len(json.load(fh)["predictions"])
            assert predicted == rows, f"{predicted} predictions for {rows} rows"
            if rows <= args.reference_max:
                start = time.perf_counter()
                assert quadratic_duplicates(ids) == []
                row["reference_check"] = time.perf_counter() - start
                if args.reference_root:
                    row["reference_seconds"], _ = run_predict(args.reference_root, home, support, query,
                                                              scratch / "out.json")
            results.append(row)
            print(json.dumps(row), flush=True)
            query.unlink()
    load_after = load_average()
    text = report(results, args, load_before, load_after)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


def _cell(row: dict, key: str, digits: int = 1) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "–"


def report(results: list[dict], args, load_before: str, load_after: str) -> str:
    command = "python bench/predict.py " + " ".join(
        [f"--rows {' '.join(map(str, args.rows))}", f"--reference-max {args.reference_max}"]
        + ([f"--reference-root {args.reference_root}"] if args.reference_root else []))
    lines = ["## Predict on many query rows (issue 12)", "",
             f"`{command}` — {machine()}, load average {load_before} at the start, {load_after} at the end; "
             f"medmeta {revision(ROOT, ('medmeta',))}.",
             f"`medmeta predict --json` in a fresh process (one torch thread), 3-way ProtoNet records model "
             f"(MLP 64-64, {3 + 2 * len(LABS)} features: age, sex, {len(LABS)} labs with 1 in 8 missing), 15 "
             "support cases; the JSON counted after each run. Reference: main's duplicate-id check before issue 12 "
             "(`sorted({i for i in ids if ids.count(i) > 1})`), timed alone on the same ids"
             + (f", and the whole `medmeta predict` of main at {revision(args.reference_root, ('medmeta',))} (its "
                f"predict/cases.py as before issue 12) on the same files" if args.reference_root else "") + ".",
             "", "| query rows | CSV MiB | medmeta predict, s | peak memory, MiB | rows per second "
             "(start-up included) | old duplicate check alone, s |" + (" old medmeta predict, s |" if args.reference_root else ""),
             "|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.reference_root else "")]
    for row in results:
        rate = f"{row['rows'] / row['seconds']:,.0f}"
        lines.append(f"| {row['rows']:,} | {row['csv_mib']:.1f} | {_cell(row, 'seconds')} | {_cell(row, 'peak_mib', 0)} "
                     f"| {rate} | {_cell(row, 'reference_check', 2)} |"
                     + (f" {_cell(row, 'reference_seconds')} |" if args.reference_root else ""))
    timed = [r for r in results if "seconds" in r]
    ref = [r for r in results if "reference_check" in r]
    if len(timed) >= 2:
        small, large = timed[0], timed[-1]
        lines += ["", f"From {small['rows']:,} to {large['rows']:,} rows ({large['rows'] / small['rows']:.0f}x) the time "
                      f"grows {large['seconds'] / small['seconds']:.1f}x (start-up included)."]
    if len(ref) >= 2:
        a, b = ref[0], ref[-1]
        per_row2 = b["reference_check"] / b["rows"] ** 2
        lines += [f"The old check grows {b['reference_check'] / a['reference_check']:.1f}x for {b['rows'] / a['rows']:.0f}x "
                  f"the rows (quadratic); at that rate it alone would take {per_row2 * 1e12 / 3600:.1f} hours for "
                  "1,000,000 rows."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
