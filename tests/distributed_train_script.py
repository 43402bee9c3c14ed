"""Tiny meta-training jobs for the torchrun tests: the same code in 1 process or on N gloo ranks.

``run_job(out, algorithm, steps, ...)`` trains a real metalearn learner (MAML, FOMAML, Reptile,
ProtoNet, Matching Networks over a small MLP) on the ``clusters`` problem of tests/metalearn_toy.py
with checkpoints in ``out``; rank 0 writes ``final.safetensors`` and ``report.json`` (steps, the
largest weight difference between ranks, the validation history, the scores of 7 test
episodes split across the ranks and gathered).

``torchrun ... tests/distributed_train_script.py JOB [JOB ...] [--step-delay S] [--audit ROOT]``
where JOB is ``DIR:ALGORITHM:STEPS[:OPTIMIZER]``: runs the jobs one after another in one process
group. Each rank reports its pid and each step (``MEDMETA-RANKED`` lines, see
medmeta.training.ranked); ``--audit ROOT`` reports every file the rank creates, opens for writing
or renames under ROOT (a Python audit hook), so a test sees that only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALGORITHMS = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
TASKS = 5  # per meta-batch: 3 + 2 on two ranks, so the weighting by tasks per rank matters
LEARNER = {"maml": {"inner_steps": 1, "inner_lr": 0.1}, "fomaml": {"inner_steps": 1, "inner_lr": 0.1},
           "reptile": {"inner_steps": 3, "inner_lr": 0.1}, "protonet": {}, "matchingnet": {}}


def make_learner(algorithm: str):
    import torch

    from metalearn import build_backbone, build_learner
    from tests.metalearn_toy import FEATURES

    torch.manual_seed(5)
    n_way = 5
    return build_learner(algorithm, build_backbone("mlp", in_features=FEATURES, hidden=(16, 16)), n_way=n_way,
                         **LEARNER[algorithm])


def run_job(out: str | Path, algorithm: str, steps: int, optimizer: str = "sgd", lr: float | None = None,
            on_step=None) -> dict:
    """Train (resuming from ``out`` when it holds a checkpoint); rank 0 writes the weights and a report."""
    import torch

    from metalearn import distributed
    from metalearn.checkpoint import save_weights
    from metalearn.trainer import Trainer
    from tests.metalearn_toy import clusters

    out = Path(out)
    learner = make_learner(algorithm)
    lr = lr if lr is not None else (0.05 if optimizer == "sgd" else 1e-3)
    trainer = Trainer(learner, lambda step: clusters(step, tasks=TASKS), max_steps=steps, lr=lr, optimizer=optimizer,
                      val_episodes=clusters(0, tasks=TASKS, split="test"), val_every=5, checkpoint_dir=out,
                      checkpoint_every=5, seed=7, device="cpu", config={"problem": "clusters", "algorithm": algorithm},
                      on_step=on_step)
    result = trainer.fit()
    w = distributed.world()
    flat = torch.cat([p.detach().reshape(-1) for p in learner.parameters()])
    spread = 0.0
    if w.distributed:
        everyone = [torch.zeros_like(flat) for _ in range(w.size)]
        torch.distributed.all_gather(everyone, flat)
        spread = max(float((t - everyone[0]).abs().max()) for t in everyone)
    from metalearn.evaluation import episode_scores

    scores = episode_scores(learner, clusters(1, tasks=7, split="test"), split_across_ranks=True)
    summary = {"algorithm": algorithm, "steps": result.steps, "world": w.size, "rank_spread": spread,
               "history": result.history, "validations": result.validations, "test_scores": scores}
    if w.writes:
        save_weights(out / "final.safetensors", learner, {"steps": result.steps})
        (out / "report.json").write_text(json.dumps(summary))
    return summary


def _audit(root: Path):
    from medmeta.training.ranked import report

    root_s = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args) -> None:
        path = None
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int)
                                                                               and flags & write_flags):
                path = args[0]
        elif event in ("os.rename", "os.mkdir", "os.remove", "tempfile.mkstemp") and args:
            path = args[0]
        if path is not None:
            path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
            if os.path.abspath(path).startswith(root_s):
                report("wrote", rank=int(os.environ.get("RANK", "0")), event=event, path=os.path.abspath(path))

    sys.addaudithook(hook)


def main() -> int:
    import torch

    from medmeta.training.ranked import report
    from metalearn import distributed

    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="+", help="DIR:ALGORITHM:STEPS[:OPTIMIZER]")
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--audit", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = distributed.init_process_group(torch.device("cpu"))
    report("rank", rank=w.rank, pid=os.getpid(), world=w.size, device="cpu")
    if args.audit:
        _audit(Path(args.audit).resolve())

    def on_step(r):
        if w.writes:
            report("step", step=r.step, loss=r.loss)
        if args.step_delay:
            time.sleep(args.step_delay)

    for job in args.jobs:
        folder, algorithm, steps, *rest = job.split(":")
        run_job(folder, algorithm, int(steps), rest[0] if rest else "sgd", on_step=on_step)
    distributed.close_process_group()
    return 0


if __name__ == "__main__":
    # end like medmeta's own ranks: no interpreter finalisation once done, so a native exit-time
    # destructor (gloo's, a thread pool's: "terminate called without an active exception") cannot turn
    # a finished rank into a SIGABRT that fails its peers (seen once in CI)
    from medmeta.training.ranked import exit_now

    exit_now(main())
