"""Meta-training on torchrun ranks (real torchrun, gloo, no mocks).

Two ranks must train exactly like one process (each rank a share of the meta-batch, the
meta-gradients all-reduced weighted by tasks per rank): the weights agree within 1e-6 after 20
SGD steps for every algorithm, and the ranks' weights are identical to each other. Without the
all-reduce each rank would train on its own share and both checks fail. Only rank 0 writes;
a checkpoint of 2 ranks resumes in 1 process and the other way round; a killed rank is named
and a rerun finishes the job; and `medmeta train --nproc 2` trains a real task set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmeta.training.ranked import RankFailed, run_torchrun
from metalearn.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from tests.distributed_train_script import ALGORITHMS, run_job

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "tests/distributed_train_script.py"
STEPS, HALF = 20, 10


def _max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and x
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def _torchrun(jobs: list[str], *extra: str, on_report=None) -> list[dict]:
    reports: list[dict] = []

    def collect(report: dict) -> None:
        reports.append(report)
        if on_report is not None:
            on_report(report)

    run_torchrun(2, [SCRIPT, *jobs, *extra], on_report=collect, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    return reports


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One torchrun launch of 2 ranks for all algorithms: straight 20 steps, 10 steps (then resumed
    here in 1 process), and a resume to 20 of a 1-process run stopped at 10; 1-process references."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distributed")
    for algorithm in ALGORITHMS:
        run_job(root / "one" / algorithm, algorithm, STEPS)
        run_job(root / "one-then-two" / algorithm, algorithm, HALF)
    jobs = ([f"{root}/two/{a}:{a}:{STEPS}" for a in ALGORITHMS]
            + [f"{root}/two-then-one/{a}:{a}:{HALF}" for a in ALGORITHMS]
            + [f"{root}/one-then-two/{a}:{a}:{STEPS}" for a in ALGORITHMS])
    reports = _torchrun(jobs, "--audit", str(root))
    halfway = {a: read_checkpoint_meta(root / "two-then-one" / a / CHECKPOINT_NAME)["step"] for a in ALGORITHMS}
    for algorithm in ALGORITHMS:
        run_job(root / "two-then-one" / algorithm, algorithm, STEPS)
    return {"root": root, "reports": reports, "halfway": halfway}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_ranks_train_exactly_like_one_process(runs, algorithm):
    root = runs["root"]
    report = json.loads((root / "two" / algorithm / "report.json").read_text())
    assert report["world"] == 2 and report["steps"] == STEPS
    assert report["rank_spread"] == 0.0  # every rank holds the very same weights
    assert _max_difference(root / "one" / algorithm / "final.safetensors",
                           root / "two" / algorithm / "final.safetensors") <= 1e-6
    alone = read_checkpoint_meta(root / "one" / algorithm / CHECKPOINT_NAME)["trainer"]
    ranked = read_checkpoint_meta(root / "two" / algorithm / CHECKPOINT_NAME)["trainer"]
    assert [h["loss"] for h in ranked["history"]] == pytest.approx([h["loss"] for h in alone["history"]], abs=1e-6)
    assert [v["accuracy"] for v in ranked["validations"]] == pytest.approx(
        [v["accuracy"] for v in alone["validations"]], abs=1e-9)  # the validation episodes, split and summed
    scored = json.loads((root / "one" / algorithm / "report.json").read_text())["test_scores"]
    assert len(report["test_scores"]) == len(scored) == 7  # test episodes split 4 + 3, gathered in order
    assert report["test_scores"] == pytest.approx(scored, abs=1e-9)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_checkpoint_resumes_with_another_world_size(runs, algorithm):
    root = runs["root"]
    assert runs["halfway"][algorithm] == HALF
    reference = root / "one" / algorithm / "final.safetensors"
    for resumed in ("two-then-one", "one-then-two"):
        meta = read_checkpoint_meta(root / resumed / algorithm / CHECKPOINT_NAME)
        assert meta["step"] == STEPS and [h["step"] for h in meta["trainer"]["history"]] == list(range(1, STEPS + 1))
        assert _max_difference(reference, root / resumed / algorithm / "final.safetensors") <= 1e-6, resumed


def test_only_rank_0_writes(runs):
    written = [r for r in runs["reports"] if r["kind"] == "wrote"]
    by_rank = {rank: [r["path"] for r in written if r["rank"] == rank] for rank in (0, 1)}
    assert by_rank[1] == []
    renamed = {Path(r["path"]).parent.name for r in written if r["event"] == "os.rename"}
    assert renamed == set(ALGORITHMS)  # the audit saw rank 0's atomic checkpoint writes
    assert not list(runs["root"].rglob(".*.tmp"))


def test_a_killed_rank_is_named_and_a_rerun_finishes(runs, tmp_path):
    """kill -9 of rank 1 mid-training: torchrun stops rank 0, the error names rank 1, the last
    atomic checkpoint is intact, and a rerun (here in 1 process) resumes it to the end."""
    pids: dict[int, int] = {}
    killed: dict[str, float] = {}

    def kill_rank_1(report: dict) -> None:
        if report["kind"] == "rank":
            pids[report["rank"]] = report["pid"]
        if report["kind"] == "step" and report["step"] >= 8 and 1 in pids and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed["at"] = time.monotonic()

    folder = tmp_path / "protonet"
    with pytest.raises(RankFailed, match="rank 1 of 2 was killed by SIGKILL") as caught:
        _torchrun([f"{folder}:protonet:{STEPS}"], "--step-delay", "0.1", on_report=kill_rank_1)
    print(f"torchrun reported the killed rank {time.monotonic() - killed['at']:.1f} s after the kill")
    assert caught.value.rank == 1 and caught.value.exitcode == -signal.SIGKILL
    last = read_checkpoint_meta(folder / CHECKPOINT_NAME)["step"]
    assert 0 < last < STEPS and not (folder / "final.safetensors").exists()
    assert not list(folder.glob(".*.tmp"))
    run_job(folder, "protonet", STEPS)
    assert read_checkpoint_meta(folder / CHECKPOINT_NAME)["step"] == STEPS
    assert _max_difference(runs["root"] / "one" / "protonet" / "final.safetensors",
                           folder / "final.safetensors") <= 1e-6


ABORT_AFTER_PEER_FAILS = """\
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch.distributed as dist
from medmeta.training.ranked import report
dist.init_process_group("gloo")
flag = Path({flag!r})
if dist.get_rank() == 0:
    report("error", rank=0, type="MedmetaError", message="the task set went missing")
    flag.touch()
    time.sleep(30)  # torchrun stops this rank once rank 1 has aborted
    sys.exit(1)
while not flag.exists():
    time.sleep(0.05)
os.abort()  # what a rank's native code does when its peer failed under it
"""


def test_a_rank_that_aborts_after_its_peer_failed_is_not_blamed(tmp_path, caplog):
    """Rank 0 fails with its own error, rank 1 then aborts (SIGABRT): the error names rank 0's
    reason, and the log keeps the end of the ranks' stderr."""
    script = tmp_path / "abort_after_peer.py"
    script.write_text(ABORT_AFTER_PEER_FAILS.format(root=str(ROOT), flag=str(tmp_path / "rank-0-failed")))
    with caplog.at_level("WARNING", logger="medmeta.training"):
        with pytest.raises(RankFailed, match="rank 0 of 2 failed: the task set went missing") as caught:
            run_torchrun(2, [str(script)], env={"PYTHONPATH": str(ROOT)})
    assert caught.value.rank == 0
    assert "stderr" in caplog.text and "exitcode" in caplog.text


# -- through medmeta: a real task set -------------------------------------------------------------

TASKSET = "ddp-records"
SETTINGS = """\
tasksets: [{by: disease, inputs: records, ways: 2, shots: 2, queries: 2, seed: 0, name: ddp-records}]
train: {algorithms: [maml], steps: 6, meta_batch: 3, val_every: 3, val_episodes: 5, checkpoint_every: 2, patience: null,
        lr: 0.01, backbone: {records: {name: mlp, hidden: [16]}}, device: cpu}
"""


@pytest.mark.parametrize("nproc", ["0", "-1", "999"])
def test_a_bad_nproc_is_one_line_and_exit_2(tmp_path, nproc):
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "train", "--taskset", TASKSET, "--algo", "maml",
                             "--home", str(tmp_path), "--nproc", nproc], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nproc" in lines[0], result.stderr


def test_a_bad_nproc_environment_value_is_refused(monkeypatch):
    from medmeta.errors import MedmetaError
    from medmeta.training.settings import load_settings

    monkeypatch.setenv("MEDMETA_TRAIN_NPROC", "two")
    with pytest.raises(MedmetaError, match="MEDMETA_TRAIN_NPROC must be a positive integer"):
        load_settings()
    monkeypatch.setenv("MEDMETA_TRAIN_NPROC", "2")
    assert load_settings().train["nproc"] == 2


@pytest.mark.usefixtures("prefect_api")
def test_medmeta_train_on_two_ranks_matches_one_process(cohort150, tmp_path, monkeypatch):
    """`medmeta train --nproc 2` on a real records task set: the same model name, weights within
    1e-6 of one process, rank 0's progress relayed into the flow run's log."""
    from medmeta.home import Home
    from medmeta.tasksets.build import build_taskset
    from medmeta.tasksets.spec import make_spec
    from medmeta.training.settings import load_settings
    from medmeta.training.train import train_model
    from tests.conftest import TEST_KEY, copy_home

    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    home = Home(copy_home(cohort150, tmp_path / "home"))
    build_taskset(home, make_spec("disease", "records", 2, 2, 2, 0, TASKSET))
    twin = Home(tmp_path / "twin")
    shutil.copytree(home.root, twin.root)
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    alone = train_model(twin, TASKSET, "maml", load_settings(config))

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_LOGGING_LEVEL": "INFO"}  # the CLI ships warnings only
    done = subprocess.run([sys.executable, "-m", "medmeta.cli", "train", "--taskset", TASKSET, "--algo", "maml",
                           "--home", str(home.root), "--config", str(config), "--nproc", "2", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = json.loads(done.stdout)
    assert ranked["model"] == alone["model"] and not ranked["cached"]  # nproc is not part of the identity
    assert ranked["processes"] == 2 and alone["processes"] == 1 and ranked["steps"] == 6
    folder = home.training / ranked["model"]
    assert {"weights.safetensors", "curve.png", "result.json", "spec.json", "checkpoint"} <= {
        p.name for p in folder.iterdir()}
    alone_weights = twin.training / alone["model"] / "weights.safetensors"
    assert _max_difference(folder / "weights.safetensors", alone_weights) <= 1e-6

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId

    async def logged() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])))
            ours = [r.id for r in runs if r.parameters.get("home") == str(home.root)]
            assert len(ours) == 1
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ours)))
            return [entry.message for entry in logs]

    messages = asyncio.run(logged())
    assert any(m.startswith("step 6/6: loss") for m in messages), messages  # rank 0's reports, relayed


def test_sigterm_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    """A SIGTERM to torchrun (a cancelled flow, a pod being evicted) reaches the ranks at different
    moments; they agree on the step to stop after in the step's all-reduce, and rank 0 checkpoints it."""
    from medmeta.training.ranked import torchrun_command

    folder = tmp_path / "protonet"
    process = subprocess.Popen(torchrun_command(2, [SCRIPT, f"{folder}:protonet:40", "--step-delay", "0.1"]),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        if '"step": 6' in line:
            process.send_signal(signal.SIGTERM)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    lines = [line for line in err.splitlines() if "TrainingInterrupted: interrupted after" in line]
    assert {line[:7] for line in lines} == {"[rank0]", "[rank1]"}, err[-3000:]
    stopped = {line.split("interrupted after ")[1].split(" steps")[0] for line in lines}
    assert len(stopped) == 1, err[-3000:]  # both ranks name the same step
    assert read_checkpoint_meta(folder / CHECKPOINT_NAME)["step"] == int(stopped.pop())
