"""Train a tiny learner with checkpoints, for the kill-and-resume test (run as a subprocess).

``python tests/metalearn_train_script.py RUN_DIR [--pause-at N]``: trains TinyProto on the
clusters problem, checkpointing every 5 steps into RUN_DIR; with ``--pause-at N`` it prints
``paused`` and sleeps at the start of step N's report (after the checkpoint of step N - 1), so
the test can kill it there. At the end it writes RUN_DIR/final.safetensors.
"""

from __future__ import annotations

import argparse
import sys
import time

if __name__ == "__main__":
    import torch

    from metalearn.checkpoint import save_weights
    from metalearn.trainer import Trainer
    from tests.metalearn_toy import TinyProto, clusters

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--pause-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(3)
    learner = TinyProto(hidden=16, embedding=8, dropout=0.2)  # dropout: the RNG state must resume too

    def on_step(report):
        print(f"step {report.step}", flush=True)
        if args.pause_at is not None and report.step == args.pause_at:
            print("paused", flush=True)
            time.sleep(600)

    trainer = Trainer(learner, lambda step: clusters(step, tasks=4), max_steps=24, lr=3e-3,
                      val_episodes=clusters(0, tasks=4, split="test"), val_every=4, checkpoint_dir=args.run_dir,
                      checkpoint_every=5, seed=11, config={"problem": "clusters"}, on_step=on_step)
    result = trainer.fit()
    save_weights(f"{args.run_dir}/final.safetensors", learner, {"steps": result.steps})
    print(f"done {result.steps} best {result.best_step}", flush=True)
    sys.exit(0)
