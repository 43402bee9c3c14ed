"""Evaluation on torchrun ranks (real torchrun, gloo, no mocks).

Each rank scores a contiguous share of the meta-test episodes for the meta-learner and both
baselines; the scores are gathered in episode order and rank 0 alone writes evaluation.json.
Because every episode is scored with the torch RNG seeded from (seed, episode index), 2 ranks
give the very per-episode scores, means and 95% intervals one process gives, baselines included
(without the per-episode seeding the baselines' fresh heads would start from other random
weights on rank 1 and the scores would differ).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medmeta.training.ranked import RankFailed, run_torchrun

ROOT = Path(__file__).resolve().parents[1]
TASKSET = "eval-ranks"
SETTINGS = """\
tasksets: [{by: disease, inputs: records, ways: 2, shots: 2, queries: 2, seed: 0, name: eval-ranks}]
train: {algorithms: [maml], steps: 4, meta_batch: 2, val_every: 2, val_episodes: 3, checkpoint_every: 2, patience: null,
        lr: 0.01, backbone: {records: {name: mlp, hidden: [16]}}, device: cpu}
evaluate: {episodes: 7, shots: [1, 2], baseline_steps: 3, pretrain_steps: 5}
publish: {shots: 2}
"""


@pytest.fixture(scope="module")
def evaluated(cohort150, tmp_path_factory):
    """A trained model evaluated in 1 process in one home and on 2 ranks in its twin."""
    from medmeta.home import Home
    from medmeta.tasksets.build import build_taskset
    from medmeta.tasksets.spec import make_spec
    from medmeta.training.evaluate import evaluate_model
    from medmeta.training.settings import load_settings
    from medmeta.training.train import train_model
    from tests.conftest import TEST_KEY, copy_home

    root = tmp_path_factory.mktemp("evaluate-ranks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        mp.delenv("MEDMETA_TRAIN_NPROC", raising=False)
        home = Home(copy_home(cohort150, root / "home"))
        build_taskset(home, make_spec("disease", "records", 2, 2, 2, 0, TASKSET))
        config = root / "settings.yaml"
        config.write_text(SETTINGS)
        settings = load_settings(config)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = train_model(home, TASKSET, "maml", settings, nproc=1)["model"]
            twin, doomed = Home(root / "twin"), Home(root / "doomed")
            shutil.copytree(home.root, twin.root)
            shutil.copytree(home.root, doomed.root)
            alone_progress, ranked_progress = [], []
            alone = evaluate_model(home, model, settings, nproc=1, on_progress=alone_progress.append)
            ranked = evaluate_model(twin, model, settings, nproc=2, on_progress=ranked_progress.append)
        finally:
            torch.set_num_threads(threads)
    return {"alone": alone, "ranked": ranked, "alone_progress": alone_progress, "ranked_progress": ranked_progress,
            "home": home, "twin": twin, "doomed": doomed, "model": model,
            "settings": settings}


def test_two_ranks_score_every_episode_like_one_process(evaluated):
    alone, ranked = evaluated["alone"], evaluated["ranked"]
    assert alone["processes"] == 1 and ranked["processes"] == 2 and not ranked["cached"]
    written = json.loads((evaluated["twin"].training / evaluated["model"] / "evaluation.json").read_text())
    assert written["processes"] == 2 and written["by_shots"] == ranked["by_shots"]  # rank 0 wrote what it gathered
    assert [e["shots"] for e in ranked["by_shots"]] == [1, 2]
    for one, two in zip(alone["by_shots"], ranked["by_shots"]):
        assert one["evaluation_id"] == two["evaluation_id"] and two["episodes"] == 7  # split 4 + 3
        assert set(two["per_episode"]) == {"meta", "from_scratch", "pretrain_finetune"}
        for method, scores in one["per_episode"].items():
            assert len(two["per_episode"][method]) == 7
            assert two["per_episode"][method] == pytest.approx(scores, abs=1e-6), method
        for a, b in zip(one["rows"] + one["paired"], two["rows"] + two["paired"]):
            words = lambda row: {k: v for k, v in row.items() if isinstance(v, str)}  # noqa: E731
            assert words(a) == words(b)
            for key, value in a.items():
                if isinstance(value, float):
                    assert b[key] == pytest.approx(value, abs=1e-6), key


def test_the_baselines_are_not_all_alike_and_rank_0_cached_them_once(evaluated):
    """The comparison above is not vacuous: the baselines' scores vary over the episodes, and the
    twin's baseline cache (written by rank 0 alone) holds the same scores as the lone process's."""
    by_shots = evaluated["alone"]["by_shots"]
    assert any(len(set(e["per_episode"]["from_scratch"])) > 1 for e in by_shots)
    caches = {}
    for home in (evaluated["home"], evaluated["twin"]):
        files = sorted((home.training / "baselines").glob("*.json"))
        assert len(files) == 2  # one per shot count
        caches[home.root.name] = [json.loads(f.read_text()) for f in files]
    for one, two in zip(caches["home"], caches["twin"]):
        assert one["setup"] == two["setup"]
        for method, scores in one["per_episode"].items():
            assert two["per_episode"][method] == pytest.approx(scores, abs=1e-6)
    assert not list(evaluated["twin"].root.rglob(".*.tmp"))


def test_progress_comes_each_tenth_of_the_episodes_alone_and_relayed_from_rank_0(evaluated):
    """7 episodes per method: a report per episode crossing a tenth, in 1 process; rank 0's share
    (4 episodes) scaled to the 7, relayed through torchrun's pipe; both end each method at 7/7."""
    for key in ("alone_progress", "ranked_progress"):
        got = evaluated[key]
        parts = [(p.shots, p.method) for p in got if p.done == p.total]
        assert parts == [(s, m) for s in (1, 2) for m in ("from_scratch", "pretrain_finetune", "meta")], key
        assert all(p.total == 7 and p.parts == 6 and p.model == evaluated["model"] for p in got)
        assert got[-1].fraction == 1.0 and all(a.fraction <= b.fraction for a, b in zip(got, got[1:]))
    assert [p.done for p in evaluated["alone_progress"] if (p.shots, p.method) == (1, "meta")] == list(range(1, 8))
    assert len(evaluated["ranked_progress"]) < len(evaluated["alone_progress"])  # rank 0 reports its 4 episodes


def test_episode_scores_do_not_depend_on_the_random_state_before():
    """A baseline's episode score depends on (seed, episode index) alone, not on what ran before."""
    from metalearn.baselines import FromScratch
    from metalearn.episodes import Episodes
    from metalearn.evaluation import episode_scores

    generator = torch.Generator().manual_seed(3)
    episodes = Episodes(torch.randn(6, 4, 5, generator=generator), torch.tensor([[0, 0, 1, 1]] * 6),
                        torch.randn(6, 8, 5, generator=generator), torch.randint(2, (6, 8), generator=generator), 2)
    method = FromScratch(lambda: torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU()), 2, steps=2, lr=0.5)
    torch.manual_seed(1)
    first = episode_scores(method, episodes, seed=11)
    torch.manual_seed(2)
    assert episode_scores(method, episodes, seed=11) == first
    torch.manual_seed(2)
    state = torch.get_rng_state()
    episode_scores(method, episodes, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was


def test_a_killed_rank_is_named_and_nothing_is_written(evaluated, tmp_path):
    """kill -9 of rank 1 as soon as it has joined: rank 0 cannot gather its scores, torchrun stops
    it, the error names rank 1, and neither evaluation.json nor a baseline cache is written; a rerun
    (here in 1 process) writes the same evaluation as before."""
    from medmeta.training.evaluate import evaluate_model

    home, model = evaluated["doomed"], evaluated["model"]
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"settings": evaluated["settings"].as_dict(),
                                         "source": evaluated["settings"].source}))

    def kill_rank_1(report: dict) -> None:
        if report["kind"] == "rank" and report["rank"] == 1:
            os.kill(report["pid"], 9)

    # the ranks wait 20 s before scoring: time enough for this process, however loaded, to kill rank 1
    # (once it is killed torchrun stops rank 0 at once; the delay costs nothing then)
    with pytest.raises(RankFailed, match="evaluation rank 1 of 2 was killed by SIGKILL") as caught:
        run_torchrun(2, ["-m", "medmeta.training.ranked", "--home", str(home.root), "--evaluate", model,
                         "--settings", str(settings_file)], on_report=kill_rank_1, cwd=ROOT,
                     env={"PYTHONPATH": str(ROOT), "MEDMETA_TEST_EVALUATION_DELAY_S": "20"}, job="evaluation")
    assert caught.value.rank == 1
    assert not (home.training / model / "evaluation.json").exists()
    assert not (home.training / "baselines").exists() and not list(home.root.rglob(".*.tmp"))
    again = evaluate_model(home, model, evaluated["settings"], nproc=1)
    assert again["by_shots"] == evaluated["alone"]["by_shots"]


@pytest.mark.parametrize("nproc", ["0", "999"])
def test_a_bad_nproc_is_one_line_and_exit_2(tmp_path, nproc):
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "evaluate", "some-model", "--home", str(tmp_path),
                             "--nproc", nproc], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nproc" in lines[0] and "evaluation processes" in lines[0], result.stderr


def test_reports_of_two_ranks_on_one_pipe_stay_whole_lines():
    """The ranks share torchrun's stdout: each report is one write, so two ranks writing at once never
    merge two reports into one unreadable line (``print`` writes text and newline apart, and did:
    a lost "rank" report left the launcher without a rank's pid)."""
    code = ("import sys\nfrom medmeta.training.ranked import report\n"
            "for i in range(2000): report('step', rank=int(sys.argv[1]), step=i, loss=0.5)")
    read, write = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    writers = [subprocess.Popen([sys.executable, "-c", code, str(rank)], stdout=write, env=env) for rank in (0, 1)]
    os.close(write)
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    prefix = "MEDMETA-RANKED "
    reports = [json.loads(line[len(prefix):]) for line in lines if line.startswith(prefix)]
    assert len(reports) == len(lines) == 4000
    assert sorted((r["rank"], r["step"]) for r in reports) == [(k, i) for k in (0, 1) for i in range(2000)]
