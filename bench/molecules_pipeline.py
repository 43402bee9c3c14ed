"""Issue 15 end to end through medmeta's own pipeline: the 30 MoleculeACE ChEMBL tables dropped in a landing
folder, `medmeta run` with medmeta/config/pipeline-compounds.yaml (ingest with RDKit standardisation and the
compounds validation rules, three target task sets on the FS-Mol protocol's splits, seeds 0/1/2, each with
ActivityGP meta-trained, evaluated against RandomForest, logistic regression and Tanimoto kNN on the same
draws, and the best method published), timed as a whole and per stage (the run's own record, H/runs).

    python bench/molecules_pipeline.py [--home H] [--out BENCHMARKS.md]

The three task sets' evaluations (H/training/<model>/evaluation.json) are joined into the protocol's 30 (test
task, split seed) units: mean dAUPRC with its 95% t-interval per method and support size, and each method's
paired difference against RandomForest, as bench/molecules.py reports the direct protocol run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package
from _report import load_average, machine, revision, write_section  # noqa: E402  (bench/_report.py)

SECTION = "molecules-pipeline"
CONFIG = ROOT / "medmeta" / "config" / "pipeline-compounds.yaml"
ISSUE_RF = (.194, .232, .273)  # the issue's RandomForest figures at S = 16, 32, 64
ISSUE_LR = (.200, .233, .268)


def run_pipeline(home: Path, landing: Path) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MEDMETA_HOME=str(home), PYTHONPATH=str(ROOT), MEDMETA_PSEUDONYM_KEY="benchmark-only-key-0123456789abcdef")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medmeta.cli", "run", str(landing), "--config", str(CONFIG)],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(done.stdout[-3000:], done.stderr[-3000:], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"medmeta run failed (exit {done.returncode})")
    [record] = sorted((home / "runs").glob("pipeline-*.json"))[-1:]
    return json.loads(record.read_text()), seconds


def protocol_table(home: Path, summary: dict):
    from medmeta.chem.evaluation import ProtocolResult

    results = []
    for model in summary["compound_models"]:
        data = json.loads((home / "training" / model["model"] / "evaluation.json").read_text())
        results.append(ProtocolResult.from_dict(data["result"]))
    return ProtocolResult.combine(results)


def report(summary: dict, result, seconds: float, command: str, load_before: str) -> str:
    sizes = result.sizes
    head = " | ".join(f"S={s}" for s in sizes)
    rows = []
    for method in result.methods:
        cells = " | ".join(result.estimate(method, s).text() for s in sizes)
        diffs = " | ".join("" if method == "rf" else result.difference(method, "rf", s).text() for s in sizes)
        rows.append(f"| {method} | {cells} | {diffs} |")
    stages = [s for s in summary.get("stages", []) if not s.get("within")]
    stage_rows = "\n".join(f"| {s['stage']} | `{s['run']}` | {s['seconds']} |" for s in stages)
    published = "\n".join(f"- `{m['published']['ref']}` ({m['taskset']}): {m['published']['published']}"
                          f" ({'a baseline' if m['published'].get('baseline') else 'the meta-learner'}), "
                          f"{m['published']['decision']}" for m in summary["compound_models"])
    rf = [result.estimate("rf", s).mean for s in sizes]
    lr = [result.estimate("logistic_regression", s).mean for s in sizes] if "logistic_regression" in result.methods else []
    return f"""## Compound activity end to end: `medmeta run` on the 30 MoleculeACE tables (issue 15)

`{command}` on {machine()}; {revision(ROOT)}; load average before {load_before}, after {load_average()}.
Settings: medmeta/config/pipeline-compounds.yaml over pipeline.yaml's `compounds:` (ActivityGP on ECFP4 | atom pairs |
torsions | FCFP4 | MACCS, {summary['compound_models'][0]['steps']} meta-training steps; {result.n_draws} draws per test
task and support size; the FS-Mol protocol's 20/10 splits by target, seeds 0, 1, 2).

**End to end: {seconds / 60:.1f} minutes** (target: under 60), from the files in the landing folder to three
published models: ingest of {summary['ingest']['files_seen']} files ({summary['ingest']['files_quarantined']} quarantined),
validation {'passed' if summary['validation']['success'] else 'FAILED'}, task sets, training, evaluation, publishing.

| stage | run | seconds |
|---|---|---:|
{stage_rows}

dAUPRC over the {len(result.units)} (test task, split seed) units, mean [95% interval], and the paired difference
against RandomForest on the same draws:

| method | {head} | {" | ".join(f"minus rf, S={s}" for s in sizes)} |
|---|{"---|" * len(sizes)}{"---|" * len(sizes)}
{chr(10).join(rows)}

Against the issue's figures: RandomForest {", ".join(f"{a:.3f} (issue {b:.3f})" for a, b in zip(rf, ISSUE_RF))};
logistic regression {", ".join(f"{a:.3f} (issue {b:.3f})" for a, b in zip(lr, ISSUE_LR))}.

Published (the best method at the gate's support size, 16):
{published}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="a fresh home folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from medmeta.chem.moleculeace import copy_tables

    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="medmeta-bench-molecules-"))
    home = args.home or work / "home"
    copy_tables(work / "landing" / "chembl")
    summary, seconds = run_pipeline(home, work / "landing")
    result = protocol_table(home, summary)
    text = report(summary, result, seconds, "python bench/molecules_pipeline.py " + " ".join(sys.argv[1:]), load_before)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
