"""The model registry: versions whole and immutable, the champion gate, checksums, concurrency, kills."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from medmeta import registry
from medmeta.registry import ChampionScore, Gate
from medmeta.registry.store import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def card(accuracy: float = 0.7, evaluation_id: str = "eval-a", **extra) -> dict:
    return {"algorithm": "protonet", "evaluation_id": evaluation_id,
            "metrics": {"accuracy": {"mean": accuracy, "ci_low": accuracy - 0.02, "ci_high": accuracy + 0.02}},
            "config": {"n_way": 3, "k_shot": 5}, "snapshot": "snap-1", "validation_digest": "vd-1",
            "task_set": {"digest": "ts-1", "path": "tasksets/ts-1.json"}, **extra}


def version_bytes(home: Path, name: str, version: int) -> dict[str, bytes]:
    folder = home / "registry" / name / "versions" / str(version)
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_publish_resolve_load_round_trip(tmp_path):
    net = tiny_net()
    published = registry.publish(tmp_path, "derm-fewshot", net.state_dict(), card())
    assert (published.version, published.card["gate"]["decision"]) == (1, "champion")
    for ref in ("derm-fewshot", "derm-fewshot@champion", "derm-fewshot@1"):
        found, tensors = registry.load(tmp_path, ref)
        assert found.version == 1
        fresh = tiny_net(seed=99)
        fresh.load_state_dict(tensors)
        x = torch.randn(5, 4)
        assert torch.equal(fresh(x), net(x))
    saved = found.card
    assert saved["weights"]["sha256"] and saved["weights"]["parameters"] == sum(p.numel() for p in net.parameters())
    assert saved["code_version"]["package"] == "0.1.0" and saved["created"].endswith("Z")
    assert saved["device"] == "cpu" and saved["task_set"]["digest"] == "ts-1" and saved["snapshot"] == "snap-1"
    assert json.loads(found.card_path.read_text()) == saved
    markdown = found.card_md_path.read_text()
    assert "# derm-fewshot v1" in markdown and "[0.68, 0.72] (95%)" in markdown
    assert "medmeta predict derm-fewshot@1" in markdown


def test_versions_are_immutable_and_read_only(tmp_path):
    registry.publish(tmp_path, "m", tiny_net(0).state_dict(), card(0.70))
    first = version_bytes(tmp_path, "m", 1)
    registry.publish(tmp_path, "m", tiny_net(1).state_dict(), card(0.90))  # becomes champion
    registry.publish(tmp_path, "m", tiny_net(2).state_dict(), card(0.50))  # challenger
    registry.set_alias(tmp_path, "m", "champion", 1, reason="rollback")
    assert version_bytes(tmp_path, "m", 1) == first
    assert registry.versions(tmp_path, "m") == [1, 2, 3]
    for f in (tmp_path / "registry" / "m" / "versions" / "1").iterdir():
        assert f.stat().st_mode & 0o222 == 0


def test_gate_promotes_only_by_more_than_the_margin(tmp_path):
    gate = Gate("accuracy", higher_is_better=True, margin=0.05)
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.70), gate=gate)
    within = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.74), gate=gate)
    assert within.card["gate"]["decision"] == "challenger" and within.card["gate"]["comparable"]
    assert "does not beat the champion by more than the margin 0.05" in within.card["gate"]["reason"]
    assert within.card["gate"]["champion"] == 0.70 and within.card["gate"]["candidate"] == 0.74
    assert "does not beat" in within.card_md_path.read_text()
    aliases = registry.read_aliases(tmp_path, "m")
    assert (aliases["champion"], aliases["challenger"]) == (1, 2)
    worse = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.60), gate=gate)
    assert worse.card["gate"]["decision"] == "challenger" and worse.card["gate"]["improvement"] < 0
    better = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.76), gate=gate)
    assert better.card["gate"]["decision"] == "champion" and "beats the champion" in better.card["gate"]["reason"]
    aliases = registry.read_aliases(tmp_path, "m")
    assert (aliases["champion"], aliases["challenger"]) == (4, None)  # the old challenger lost to an old champion
    assert [(e["version"], e["decision"]) for e in aliases["history"]] == [
        (1, "champion"), (2, "challenger"), (3, "challenger"), (4, "champion")]
    assert registry.resolve(tmp_path, "m").version == 4


def test_gate_lower_is_better_for_mse(tmp_path):
    gate = Gate("mse", higher_is_better=False, margin=0.1)
    regression = lambda mse, ev="eval-r": {"algorithm": "maml", "evaluation_id": ev, "metrics": {"mse": mse}}
    registry.publish(tmp_path, "r", tiny_net().state_dict(), regression(1.0), gate=gate)
    assert registry.publish(tmp_path, "r", tiny_net().state_dict(), regression(0.95), gate=gate).card["gate"]["decision"] == "challenger"
    assert registry.publish(tmp_path, "r", tiny_net().state_dict(), regression(1.5), gate=gate).card["gate"]["decision"] == "challenger"
    promoted = registry.publish(tmp_path, "r", tiny_net().state_dict(), regression(0.8), gate=gate)
    assert promoted.card["gate"]["decision"] == "champion"
    assert promoted.card["gate"]["improvement"] == pytest.approx(0.2)
    assert "lower is better" in promoted.card["gate"]["reason"]


def test_gate_never_compares_different_evaluations(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.70, "eval-a"))
    unmatched = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.99, "eval-b"))
    assert unmatched.card["gate"]["decision"] == "challenger" and not unmatched.card["gate"]["comparable"]
    assert unmatched.card["gate"]["reason"].startswith("not comparable")
    # the champion re-scored on the candidate's evaluation: now they are compared
    rescored = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.80, "eval-b"),
                                champion_score=ChampionScore(version=1, evaluation_id="eval-b", value=0.75))
    assert rescored.card["gate"]["decision"] == "champion" and rescored.card["gate"]["champion"] == 0.75
    # a score for a version that is no longer the champion is not used
    stale = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.95, "eval-c"),
                             champion_score=ChampionScore(version=1, evaluation_id="eval-c", value=0.1))
    assert stale.card["gate"]["decision"] == "challenger" and "not the champion" in stale.card["gate"]["reason"]
    # a score measured on another evaluation is the caller's mistake: refused, nothing written
    with pytest.raises(registry.InvalidCard, match="same evaluation only"):
        registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.95, "eval-c"),
                         champion_score=ChampionScore(version=3, evaluation_id="eval-a", value=0.1))
    assert registry.versions(tmp_path, "m") == [1, 2, 3, 4]


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    weights = tiny_net().state_dict()
    with pytest.raises(registry.InvalidModelName, match="not a safe slug"):
        registry.publish(tmp_path, "../escape", weights, card())
    with pytest.raises(registry.InvalidModelName, match="not a safe slug"):
        registry.publish(tmp_path, "Bad Name", weights, card())
    with pytest.raises(registry.InvalidCard, match="no number for the gate's metric 'mse'"):
        registry.publish(tmp_path, "m", weights, card(), gate=Gate("mse", higher_is_better=False))
    with pytest.raises(registry.InvalidCard, match="version are set by the registry"):
        registry.publish(tmp_path, "m", weights, card(version=7))
    with pytest.raises(registry.InvalidCard, match="evaluation_id"):
        registry.publish(tmp_path, "m", weights, {"algorithm": "maml", "metrics": {"accuracy": 0.5}})
    with pytest.raises(registry.InvalidCard, match="torch.Tensor"):
        registry.publish(tmp_path, "m", {"w": [1.0, 2.0]}, card())
    assert not (tmp_path / "registry").exists()


def test_tampered_weights_are_refused(tmp_path):
    published = registry.publish(tmp_path, "m", tiny_net().state_dict(), card())
    path = published.weights_path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(registry.ChecksumMismatch, match="checksum mismatch"):
        registry.load(tmp_path, "m@1")
    assert path.read_bytes() == bytes(data)  # reported, nothing changed
    assert registry.resolve(tmp_path, "m@1").card == published.card


def test_unknown_names_versions_and_aliases_say_what_exists(tmp_path):
    with pytest.raises(registry.ModelNotFound, match="the registry is empty"):
        registry.resolve(tmp_path, "m")
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.7))
    registry.publish(tmp_path, "other", tiny_net().state_dict(), card(0.7))
    with pytest.raises(registry.ModelNotFound, match="no model named nope .*models: m, other"):
        registry.resolve(tmp_path, "nope@1")
    with pytest.raises(registry.ModelNotFound, match="no version 9; versions: 1; aliases: champion -> 1"):
        registry.resolve(tmp_path, "m@9")
    with pytest.raises(registry.ModelNotFound, match="has no challenger"):
        registry.resolve(tmp_path, "m@challenger")
    with pytest.raises(registry.InvalidModelName, match="an alias"):
        registry.resolve(tmp_path, "m@latest")
    with pytest.raises(registry.ModelNotFound, match="no version 4"):
        registry.set_alias(tmp_path, "m", "champion", 4, reason="typo")


def test_set_alias_and_adapted_models_record_lineage(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.7))
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.9))
    aliases = registry.set_alias(tmp_path, "m", "champion", 1, reason="v2 misbehaves at site C")
    assert registry.resolve(tmp_path, "m").version == 1
    assert aliases["history"][-1] == {**aliases["history"][-1], "event": "set_alias", "alias": "champion",
                                      "version": 1, "reason": "v2 misbehaves at site C"}
    registry.set_alias(tmp_path, "m", "champion", None, reason="cleared")
    assert registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.1)).card["gate"]["decision"] == "champion"
    adapted = registry.publish(tmp_path, "m-site-c", tiny_net().state_dict(), card(0.8, parent="m@2"))
    assert adapted.card["parent"] == {"name": "m", "version": 2,
                                      "weights_sha256": registry.resolve(tmp_path, "m@2").card["weights"]["sha256"]}
    assert "parent model: m@2" in adapted.card_md_path.read_text()
    with pytest.raises(registry.ModelNotFound):
        registry.publish(tmp_path, "m-site-d", tiny_net().state_dict(), card(0.8, parent="m@7"))


def test_aliases_are_repaired_when_a_publisher_died_after_the_rename(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.7))
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.9))
    aliases_file = tmp_path / "registry" / "m" / "aliases.json"
    aliases = json.loads(aliases_file.read_text())
    aliases["history"].pop()  # as if the process died between the rename of version 2 and this write
    aliases["champion"] = 1
    aliases_file.write_text(json.dumps(aliases))
    assert registry.resolve(tmp_path, "m").version == 2  # readers apply the pending decision in memory
    assert json.loads(aliases_file.read_text())["champion"] == 1  # without writing
    third = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.8))
    assert third.card["gate"]["champion_version"] == 2 and third.card["gate"]["decision"] == "challenger"
    history = registry.read_aliases(tmp_path, "m")["history"]
    assert [e["version"] for e in history] == [1, 2, 3] and "applied later" in history[1]["reason"]


def _publish_many(home: str, worker: int, count: int) -> list[int]:
    published = []
    for i in range(count):
        tensors = {"w": torch.full((64, 64), float(worker * 100 + i)), "b": torch.arange(8.0) + worker}
        found = registry.publish(home, "shared", tensors, card(0.5, worker=worker, i=i))
        published.append(found.version)
    return published


def test_concurrent_publishes_from_processes_get_distinct_whole_versions(tmp_path):
    workers, each = 4, 3
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        pending = pool.starmap_async(_publish_many, [(str(tmp_path), w, each) for w in range(workers)])
        seen = set()
        while not pending.ready():  # a reader meanwhile never sees a half-written version
            if registry.model_names(tmp_path):
                for version in registry.versions(tmp_path, "shared"):
                    if version not in seen:
                        registry.load(tmp_path, f"shared@{version}")
                        seen.add(version)
            time.sleep(0.01)
        results = pending.get(timeout=300)
    allocated = sorted(v for r in results for v in r)
    assert allocated == list(range(1, workers * each + 1))
    assert registry.versions(tmp_path, "shared") == allocated
    for version in allocated:
        found, tensors = registry.load(tmp_path, f"shared@{version}")
        worker, i = found.card["worker"], found.card["i"]
        assert torch.equal(tensors["w"], torch.full((64, 64), float(worker * 100 + i)))
        assert found.card["version"] == version
    history = registry.read_aliases(tmp_path, "shared")["history"]
    assert sorted(e["version"] for e in history) == allocated
    assert not list((tmp_path / "registry" / "shared" / ".staging").iterdir())


KILLED_PUBLISH = """
import sys, torch
from medmeta import registry
registry.publish(sys.argv[1], "m", {"w": torch.ones(3)},
                 {"algorithm": "maml", "evaluation_id": "e", "metrics": {"accuracy": 0.99}})
"""


def test_a_publish_killed_before_the_rename_leaves_nothing_visible(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.7))
    before = version_bytes(tmp_path, "m", 1)
    marker = tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISH, str(tmp_path)], cwd=ROOT,
                             env={**os.environ, PAUSE_ENV: str(marker)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the publishing process ended before its pause"
            assert time.monotonic() < deadline, "the publishing process never reached its pause"
            time.sleep(0.05)
        staging = tmp_path / "registry" / "m" / ".staging"
        built = [d for d in staging.iterdir() if d.is_dir()]
        assert len(built) == 1 and {f.name for f in built[0].iterdir()} == {"model.safetensors", "card.json", "card.md"}
        # while it is paused, holding the lock with a whole build, readers see only version 1
        assert registry.versions(tmp_path, "m") == [1] and registry.resolve(tmp_path, "m").version == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert registry.versions(tmp_path, "m") == [1] and version_bytes(tmp_path, "m", 1) == before
    assert registry.read_aliases(tmp_path, "m")["champion"] == 1
    after = registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.9))
    assert after.version == 2 and after.card["gate"]["decision"] == "champion"
    assert not list(staging.iterdir())  # the dead build was cleaned up


def test_metrics_must_be_numbers_or_estimates_and_evaluation_ids_are_stable(tmp_path):
    with pytest.raises(registry.InvalidCard, match="metrics.auc: a metric is a number"):
        registry.publish(tmp_path, "m", tiny_net().state_dict(), card() | {"metrics": {"accuracy": 0.5, "auc": {"mean": "high"}}})
    with pytest.raises(registry.InvalidCard, match="deltas.maml.accuracy"):
        registry.publish(tmp_path, "m", tiny_net().state_dict(), card(deltas={"maml": {"accuracy": [0.1]}}))
    first = registry.evaluation_id("ts-1", seed=0, episodes=600, n_way=5)
    assert first == registry.evaluation_id("ts-1", seed=0, episodes=600, n_way=5)
    assert first != registry.evaluation_id("ts-1", seed=1, episodes=600, n_way=5)


def test_a_baseline_is_published_without_weights_and_its_card_says_so(tmp_path):
    """Issue 15: where a baseline (a random forest fitted on each support set) beats the meta-learners,
    the task set's model is the baseline itself: an empty safetensors file, a card that says it."""
    with pytest.raises(registry.InvalidCard, match="non-empty dict"):
        registry.publish(tmp_path, "actives", {}, card(algorithm="random_forest"))
    with pytest.raises(registry.InvalidCard, match="baseline must be"):
        registry.publish(tmp_path, "actives", {}, card(algorithm="random_forest", baseline={"features": "ecfp4"}))
    assert not (tmp_path / "registry" / "actives").exists() or not list((tmp_path / "registry" / "actives").glob("versions/*"))
    why = "It beat the meta-learner (dAUPRC .27 against .24 at 16 compounds)."
    published = registry.publish(tmp_path, "actives", {}, card(
        algorithm="random_forest", baseline={"method": "random_forest", "features": "ecfp4_bits", "why": why}))
    found, tensors = registry.load(tmp_path, "actives@champion")
    assert tensors == {} and found.card["weights"]["tensors"] == 0 and found.card["device"] == "cpu"
    markdown = found.card_md_path.read_text()
    assert "A baseline, not a meta-learned model:** random_forest on ecfp4_bits" in markdown and why in markdown
    assert "(none: fitted on the support set)" in markdown and published.version == 1
