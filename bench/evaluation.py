"""The two baselines on 600 five-shot meta-test episodes: stacked (many episodes at once) against
the old per-episode loop, side by side in one run, for each backbone of the demo cohort's task sets.

    python bench/evaluation.py [--home H] [--episodes 600] [--loop-episodes 40] [--out BENCHMARKS.md]

The home holds the demo cohort's task sets (`make demo`'s `medmeta synth --patients 240 --seed 0
--faults`, ingested, with `medmeta tasks build --by disease --inputs images|records --ways 3 --shots
5 --queries 3 --seed 0`); without --home the bench builds them in a temporary home. Settings:
medmeta/config/pipeline.yaml's defaults (evaluate: 100 baseline steps, stop loss 0.01, lr 0.01, 200
pretraining steps; train.backbone: conv4 hidden 32 on 64x64 images, MLP [64, 64] on records).

For each backbone: the episodes the evaluation scores (``medmeta.training.evaluate.test_episodes``,
seed 0), the from-scratch and pretrain + fine-tune baselines scored stacked on all of them
(wall and CPU seconds, pretraining included), and the old per-episode loop (``stacked=False``) on
the first ``--loop-episodes`` of them, timed and extrapolated to all (the loop takes hours for the
conv net on a loaded machine); the scores of the episodes both scored are compared (float32: a
batched kernel rounds differently, so an argmax may flip now and then).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package

from _report import cpu_model, load_average, revision, write_section  # noqa: E402  (bench/_report.py)

SECTION = "evaluation"
TARGET_S = 180.0
SHOTS = 5


def build_demo_home(work: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MEDMETA_HOME=str(work / "home"), PYTHONPATH=str(ROOT))
    run = lambda *a: subprocess.run([sys.executable, "-m", "medmeta.cli", *a], env=env, check=True,  # noqa: E731
                                    capture_output=True, cwd=ROOT)
    run("key", "create")
    run("synth", "--out", str(work / "data"), "--patients", "240", "--seed", "0", "--faults")
    subprocess.run([sys.executable, "-m", "medmeta.cli", "ingest", str(work / "data")], env=env, cwd=ROOT,
                   capture_output=True)  # the faults are quarantined: exit 1 is expected
    for inputs in ("images", "records"):
        run("tasks", "build", "--by", "disease", "--inputs", inputs, "--ways", "3", "--shots", "5", "--queries", "3",
            "--seed", "0")
    return work / "home"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(home: Path, inputs: str, episodes: int, loop_episodes: int, settings) -> dict:
    import torch

    from medmeta.home import Home
    from medmeta.tasksets.store import load_taskset
    from medmeta.training.evaluate import test_episodes
    from medmeta.training.models import backbone_factory, model_spec
    from metalearn.baselines import FromScratch, PretrainFineTune
    from metalearn.evaluation import episode_scores

    name = f"disease-{inputs}-3w5s3q-seed0"
    tasks = load_taskset(Home(home), name)
    spec = model_spec(tasks.manifest, "protonet", settings.train)
    factory, ev, seed = backbone_factory(spec), settings.evaluate, 0
    test = test_episodes(tasks, SHOTS, episodes, seed)
    first = test_episodes(tasks, SHOTS, loop_episodes, seed)  # a prefix of the same episodes (prefix-stable)
    train = tasks.splits["train"]

    def baselines(stacked: bool) -> dict:
        common = dict(stop_loss=float(ev["baseline_stop_loss"]), stacked=stacked)
        return {"from_scratch": FromScratch(factory, spec["n_way"], steps=int(ev["baseline_steps"]),
                                            lr=float(ev["baseline_lr"]), **common),
                "pretrain_finetune": PretrainFineTune(factory, spec["n_way"], train.inputs, train.labels,
                                                      pretrain_steps=int(ev["pretrain_steps"]),
                                                      finetune_steps=int(ev["baseline_steps"]),
                                                      finetune_lr=float(ev["baseline_lr"]), seed=seed, **common)}

    row = {"inputs": inputs, "backbone": spec["backbone"], "episodes": episodes, "loop_episodes": loop_episodes,
           "threads": torch.get_num_threads()}
    fast, slow = baselines(True), baselines(False)
    for method in ("from_scratch", "pretrain_finetune"):
        if method == "pretrain_finetune":  # pretraining once, apart (both paths share what it costs)
            _, row["pretrain_wall"], row["pretrain_cpu"] = timed(fast[method].pretrain)
            slow[method].network = fast[method].network
        scores, wall, cpu = timed(lambda: episode_scores(fast[method], test, seed=seed))
        loop, loop_wall, loop_cpu = timed(lambda: episode_scores(slow[method], first, seed=seed))
        same = sum(a == b for a, b in zip(scores, loop))
        row[method] = {"wall": wall, "cpu": cpu, "mean": sum(scores) / len(scores),
                       "loop_wall": loop_wall * episodes / loop_episodes, "loop_cpu": loop_cpu * episodes / loop_episodes,
                       "loop_mean_prefix": sum(loop) / len(loop), "stacked_mean_prefix": sum(scores[:len(loop)]) / len(loop),
                       "agree": same}
        print(inputs, method, row[method], flush=True)
    return row


def report(rows: list[dict], command: str, loads: list[str]) -> str:
    lines = [f"`{command}` on {cpu_model()}, {os.cpu_count()} cores; load average (1/5/15 min) at start "
             f"{loads[0]}, at end {loads[-1]} (other helpers' test suites and pipelines ran meanwhile: the machine was "
             f"loaded); torch {rows[0]['threads']} threads; {revision(ROOT, ('metalearn', 'medmeta/training'))}.",
             "",
             f"{SHOTS}-shot, 3-way, 3 queries per class, demo cohort (240 patients) task sets, default settings "
             "(medmeta/config/pipeline.yaml). Stacked: every episode of a group fitted at once "
             "(metalearn/stacked.py); loop: the old one-episode-at-a-time path on the first episodes, "
             "extrapolated to all. Seconds wall (CPU); pretraining the fine-tune baseline counted once, apart.",
             "",
             "| backbone | method | episodes | stacked | old loop (extrapolated) | speed-up | mean accuracy stacked "
             "| loop vs stacked on the loop's episodes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        label = f"{row['backbone']['name']} ({row['inputs']})"
        for method in ("from_scratch", "pretrain_finetune"):
            m = row[method]
            lines.append(f"| {label} | {method} | {row['episodes']} | {m['wall']:.1f} s ({m['cpu']:.1f}) | "
                         f"{m['loop_wall']:.1f} s ({m['loop_cpu']:.1f}) from {row['loop_episodes']} | "
                         f"{m['loop_wall'] / m['wall']:.1f}x | {m['mean']:.3f} | "
                         f"{m['agree']}/{row['loop_episodes']} episodes equal; means {m['loop_mean_prefix']:.3f} vs "
                         f"{m['stacked_mean_prefix']:.3f} |")
        both = row["from_scratch"]["wall"] + row["pretrain_finetune"]["wall"] + row["pretrain_wall"]
        lines.append(f"| {label} | **both baselines, pretraining included** | {row['episodes']} | **{both:.1f} s** "
                     f"| | | | target {TARGET_S:.0f} s: {'met' if both <= TARGET_S else 'not met'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--loop-episodes", type=int, default=40)
    parser.add_argument("--inputs", nargs="+", default=["records", "images"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("MEDMETA_PSEUDONYM_KEY", "benchmark-only-key-0123456789abcdef")
    import torch

    from medmeta.training.settings import load_settings

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    home = args.home or build_demo_home(Path(tempfile.mkdtemp(prefix="medmeta-bench-evaluation-")))
    loads = [load_average()]
    settings = load_settings(None)
    rows = [measure(home, inputs, args.episodes, args.loop_episodes, settings) for inputs in args.inputs]
    loads.append(load_average())
    command = "python bench/evaluation.py " + " ".join(sys.argv[1:])
    text = report(rows, command, loads)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
