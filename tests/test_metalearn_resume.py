"""A training run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metalearn.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta

SCRIPT = Path(__file__).with_name("metalearn_train_script.py")
ROOT = SCRIPT.parent.parent


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = _start(straight)
    victim = _start(killed, "--pause-at", "13")
    for line in victim.stdout:  # wait until it sits after step 13, its last checkpoint at step 10
        if line.strip() == "paused":
            break
    else:
        pytest.fail(f"the run ended before pausing: {victim.stderr.read()}")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert read_checkpoint_meta(killed / CHECKPOINT_NAME)["step"] == 10
    assert not (killed / "final.safetensors").exists()

    out = _finish(_start(killed))
    assert out.splitlines()[0] == "step 11"  # resumed after the checkpoint, not from scratch
    _finish(uninterrupted)

    a, b = load_file(straight / "final.safetensors"), load_file(killed / "final.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta_a, meta_b = read_checkpoint_meta(straight / CHECKPOINT_NAME), read_checkpoint_meta(killed / CHECKPOINT_NAME)
    assert meta_a["step"] == meta_b["step"] == 24
    assert meta_a["trainer"]["history"] == meta_b["trainer"]["history"]
    assert meta_a["trainer"]["validations"] == meta_b["trainer"]["validations"]
    assert len(meta_b["trainer"]["validations"]) == 6  # the validation at step 12, lost with the kill, was redone
    assert not list(killed.glob(".*.tmp"))  # no temp file left behind by the kill
