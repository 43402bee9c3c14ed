"""Adapted models from the real pipeline: one per rare disease and rare drug, linked to the champion,
holding no patient inputs, predicting what adapting the parent predicts, and never published twice."""

from __future__ import annotations

import json

import pytest
import torch

from medmeta import registry
from medmeta.errors import MedmetaError
from medmeta.registry.card import RESERVED
from medmeta.home import Home
from medmeta.tasksets.store import load_taskset
from medmeta.tasksets.store import read_manifest
from medmeta.training.adapt import (_gather, adapt_taskset, adapted_name, check_no_inputs, plan_adaptations,
                                    retire_stale)
from medmeta.training.arrivals import arrival_changes, champion_card
from medmeta.training.models import build_learner
from medmeta.training.publish import registry_name
from tests.pipeline_home import DRUGS, IMAGES, build_home

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")
IMAGES_SET, DRUG_SET = "disease-images-2w2s2q-seed0", "drug-records-2w2s3q-seed0"


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_api):
    return build_home(tmp_path_factory.mktemp("adapt"), [IMAGES, DRUGS], ["protonet", "fomaml"])


def _published(built, taskset: str) -> list[dict]:
    return [a for a in built["summary"]["adapted"] if a["taskset"] == taskset and "ref" in a]


def test_every_rare_class_gets_an_adapted_model_linked_to_the_champion(built):
    home = Home(built["home"])
    for taskset in (IMAGES_SET, DRUG_SET):
        tasks = load_taskset(home, taskset)
        rare = tasks.splits["adaptation"].codes
        assert rare, f"{taskset} should have rare classes"
        entries = {a["target"]: a for a in built["summary"]["adapted"] if a["taskset"] == taskset}
        assert sorted(entries) == sorted(rare)  # each one published, or skipped with its reason
        champion = registry.resolve(home, f"{registry_name(taskset)}@champion")
        for code, entry in entries.items():
            if "skipped" in entry:
                assert tasks.manifest["kind"] == "drug" and "no case with outcome" in entry["skipped"]
                continue
            found = registry.resolve(home, f"{adapted_name(registry_name(taskset), code)}@champion")
            card = found.card
            assert card["parent"] == {"name": champion.name, "version": champion.version,
                                      "weights_sha256": champion.card["weights"]["sha256"]}
            adaptation = card["adaptation"]
            assert adaptation["target"] == code and adaptation["needs_support"] is False
            assert card["config"]["spec"] == champion.card["config"]["spec"]
            if tasks.manifest["kind"] == "disease":
                cases = next(c["cases"] for c in tasks.manifest["splits"]["adaptation"]["classes"] if c["code"] == code)
                k = min(tasks.manifest["shots"], cases)
                assert adaptation["label_order"][0] == code
                assert set(adaptation["label_order"][1:]) <= set(tasks.splits["test"].codes)
                assert [c["support_cases"] for c in adaptation["classes"]] == [k] * tasks.manifest["ways"]
            else:
                assert adaptation["label_order"] == ["no_response", "response"]
            assert 0.0 <= card["metrics"]["support_accuracy"] <= 1.0
            assert card["gate"]["metric"] == "loo_accuracy" and card["gate"]["rule"] == "estimate"
            assert entry["alias"] == "champion" and entry["decision"] == "champion"
    assert any(_published(built, DRUG_SET)), "at least one rare drug has both outcomes"


def _by_hand(learner, tasks, plan) -> tuple[int, int]:
    """Leave-one-out counted with learner.adapt (not the published-state path): (correct, predictions)."""
    correct = n = 0
    labels = [label for _, _, label in plan.support]
    for i, case in enumerate(plan.support):
        if labels.count(case[2]) < 2:
            continue
        torch.manual_seed(0)
        x, y = _gather(tasks, plan.support[:i] + plan.support[i + 1:])
        qx, qy = _gather(tasks, [case])
        correct += int(learner.adapt(x, y)(qx).argmax(-1).item() == qy.item())
        n += 1
    if plan.held_out:
        torch.manual_seed(0)
        x, y = _gather(tasks, plan.support)
        hx, hy = _gather(tasks, plan.held_out)
        correct += int((learner.adapt(x, y)(hx).argmax(-1) == hy).sum())
        n += len(plan.held_out)
    return correct, n


def test_each_adapted_model_states_its_leave_one_out_estimate_and_on_how_many_cases(built):
    home = Home(built["home"])
    seen_estimate = False
    for taskset in (IMAGES_SET, DRUG_SET):
        tasks = load_taskset(home, taskset)
        plans = {p.target: p for p in plan_adaptations(tasks)}
        for entry in _published(built, taskset):
            card = registry.resolve(home, entry["ref"]).card
            metrics, plan = card["metrics"], plans[entry["target"]]
            parent = registry.resolve(home, f"{card['parent']['name']}@{card['parent']['version']}")
            learner = build_learner(parent.card["config"]["spec"])
            learner.load_state_dict(parent.load_weights())
            learner.eval()
            correct, n = _by_hand(learner, tasks, plan)
            if "loo_accuracy" not in metrics:  # a single case of the class: nothing to leave out
                assert "no leave-one-out estimate" in card["adaptation"]["estimate"]
                continue
            seen_estimate = True
            loo = metrics["loo_accuracy"]
            assert (loo["correct"], loo["n"], metrics["loo_cases"]) == (correct, n, n)
            assert loo["ci_low"] <= loo["mean"] == round(correct / n, 6) <= loo["ci_high"]
            assert 1 <= metrics["loo_target_cases"] <= n
            assert f"based on {n} cases" in registry.resolve(home, entry["ref"]).card_markdown()
    assert seen_estimate, "the cohort has a rare class with two or more cases"


def test_the_champion_saw_every_class_of_its_own_build(built):
    home = Home(built["home"])
    champion = champion_card(home, IMAGES_SET)
    tasks = load_taskset(home, IMAGES_SET)
    splits = champion.card["task_set"]["splits"]
    assert {c for codes in splits.values() for c in codes} == {c for s in tasks.splits.values() for c in s.codes}
    assert splits["train"] == tasks.splits["train"].codes
    # its own build again: the arrival would adapt it to the adaptation classes (never meta-trained on), nothing grew
    manifest = read_manifest(home, IMAGES_SET)
    changes = arrival_changes(home, manifest, manifest)
    assert changes.champion == champion.ref and not changes.rebuilt and changes.grown_classes == {}
    assert changes.new_classes == sorted(tasks.splits["adaptation"].codes)


def test_published_weights_hold_no_patient_inputs(built):
    home = Home(built["home"])
    for taskset in (IMAGES_SET, DRUG_SET):
        tasks = load_taskset(home, taskset)
        inputs = torch.cat([s.inputs for s in tasks.splits.values()])
        per_case = tuple(inputs.shape[1:])
        for entry in _published(built, taskset):
            for key, tensor in registry.resolve(home, entry["ref"]).load_weights().items():
                if len(per_case) > 1:  # images: no tensor holds [.., 1, S, S]; records: no row is a patient's
                    assert tuple(tensor.shape[-len(per_case):]) != per_case, f"{entry['ref']}: {key} is an image"
                if tensor.dim() == 2 and tensor.shape[1] == inputs.shape[-1] and inputs.dim() == 2:
                    rows_equal = (tensor.unsqueeze(1) == inputs.unsqueeze(0)).all(-1)
                    assert not bool(rows_equal.any()), f"{entry['ref']}: {key} holds a patient's record"


def test_the_stored_state_predicts_what_adapting_the_parent_predicts(built):
    home = Home(built["home"])
    tasks = load_taskset(home, IMAGES_SET)
    plans = {p.target: p for p in plan_adaptations(tasks)}
    entry = _published(built, IMAGES_SET)[0]
    adapted = registry.resolve(home, entry["ref"])
    parent = registry.resolve(home, f"{adapted.card['parent']['name']}@{adapted.card['parent']['version']}")
    learner = build_learner(parent.card["config"]["spec"])
    learner.load_state_dict(parent.load_weights())
    sx, sy = _gather(tasks, plans[entry["target"]].support)
    query = tasks.splits["test"].inputs[:5]
    expected = learner.adapt(sx, sy)(query)
    fresh = build_learner(adapted.card["config"]["spec"])  # random weights: the stored state decides
    assert torch.equal(fresh.predict_with_state(adapted.load_weights(), query), expected)


def test_a_rerun_publishes_nothing_and_a_new_champion_gets_new_adapted_versions(built):
    from flows.adapt import adapt_flow

    home = Home(built["home"])
    before = {n: registry.versions(home, n) for n in registry.model_names(home)}
    again = adapt_flow(str(home.root), str(built["config"]), IMAGES_SET)["adapted"]
    assert again and all(a.get("cached") for a in again if "ref" in a)
    assert {n: registry.versions(home, n) for n in registry.model_names(home)} == before

    name = registry_name(IMAGES_SET)
    aliases = registry.read_aliases(home, name)
    other = next(v for v in registry.versions(home, name) if v != aliases["champion"])
    registry.set_alias(home, name, "champion", other, reason="test: another champion")
    renewed = [a for a in adapt_flow(str(home.root), None, IMAGES_SET)["adapted"] if "ref" in a]
    assert renewed and not any(a["cached"] for a in renewed)
    for a in renewed:  # the gate decides on the estimates; the summary names the alias the version holds
        now = registry.read_aliases(home, a["name"])
        assert now["champion"] != now["challenger"], "a version holds both aliases"
        assert a["version"] == len(before[a["name"]]) + 1
        assert a["alias"] == a["decision"] == ("champion" if now["champion"] == a["version"] else "challenger")
        assert registry.resolve(home, a["ref"]).card["parent"]["version"] == other
    registry.set_alias(home, name, "champion", aliases["champion"], reason="test: back")


def test_an_adapted_model_whose_class_left_the_adaptation_split_is_retired_once(built):
    """D57.1 in the issue: its class became a meta-validation class; its adapted model kept its alias."""
    home = Home(built["home"])
    tasks = load_taskset(home, IMAGES_SET)
    target = _published(built, IMAGES_SET)[0]["target"]
    name = adapted_name(registry_name(IMAGES_SET), target)
    moved = json.loads(json.dumps(tasks.manifest))  # the next build, where the class has enough cases for val
    entry = next(c for c in moved["splits"]["adaptation"]["classes"] if c["code"] == target)
    moved["splits"]["adaptation"]["classes"].remove(entry)
    moved["splits"]["val"]["classes"].append(entry)
    retired = retire_stale(home, IMAGES_SET, moved)
    assert [(r["name"], r["decision"], r["cached"]) for r in retired] == [(name, "retired", False)]
    aliases = registry.read_aliases(home, name)
    assert aliases["champion"] is None and aliases["challenger"] is None
    card = registry.resolve(home, f"{name}@{registry.versions(home, name)[-1]}")
    assert "split val" in card.card["retired"]["reason"] and card.card["retired"]["time"]
    assert "## Retired" in card.card_markdown() and "meta-validated" in card.card_markdown()
    events = len(aliases["history"])
    again = retire_stale(home, IMAGES_SET, moved)
    assert [r["cached"] for r in again] == [True] and len(registry.read_aliases(home, name)["history"]) == events
    back = [a for a in adapt_taskset(home, IMAGES_SET) if a.get("target") == target]  # the real build: rare again
    assert back and back[0]["cached"] and back[0]["alias"] == "champion"
    assert "retired" not in registry.resolve(home, f"{name}@champion").card


def test_a_state_shaped_like_the_inputs_is_refused():
    x = torch.zeros(4, 1, 8, 8)
    check_no_inputs({"params.w": torch.zeros(3, 1, 3, 3)}, x)
    with pytest.raises(MedmetaError, match="shaped like patient inputs"):
        check_no_inputs({"params.w": torch.zeros(3), "leak": x.clone()}, x)


def test_the_fast_path_adapts_a_champion_of_an_earlier_build_but_not_to_a_class_it_meta_trained_on(built):
    """After new cases the task set is rebuilt (another digest); its champion, trained on the earlier
    build, is adapted at once to classes it never meta-trained on. Runs last: it adds a champion."""
    home = Home(built["home"])
    name = registry_name(IMAGES_SET)
    current = registry.resolve(home, f"{name}@champion")
    rare = load_taskset(home, IMAGES_SET).splits["adaptation"].codes
    earlier = json.loads(json.dumps({k: v for k, v in current.card.items() if k not in RESERVED}))
    earlier["task_set"] = {**earlier["task_set"], "digest": "an-earlier-build",
                           "splits": {**earlier["task_set"]["splits"], "train": earlier["task_set"]["splits"]["train"] + rare[:1]}}
    older = registry.publish(home, name, current.load_weights(), earlier, champion_score=None)
    registry.set_alias(home, name, "champion", older.version, reason="test: a champion of an earlier build")
    try:
        same = adapt_taskset(home, IMAGES_SET)
        assert [a["skipped"] for a in same if "skipped" in a] and "another build" in same[-1]["skipped"]
        assert rare[0] in champion_card(home, IMAGES_SET).card["task_set"]["splits"]["train"]
        manifest = read_manifest(home, IMAGES_SET)  # the arrival's decision: the classes the champion never trained on
        assert arrival_changes(home, manifest, manifest).new_classes == sorted(rare[1:])
        fast = {a["target"]: a for a in adapt_taskset(home, IMAGES_SET, targets=rare, parent_build="compatible")}
        assert sorted(fast) == sorted(rare)
        assert "meta-trained on" in fast[rare[0]]["skipped"]
        published = [code for code in rare[1:] if "ref" in fast[code]]
        assert published, "the other rare classes are adapted from the earlier build's champion"
        for code in published:
            assert fast[code]["parent"] == older.ref and not fast[code]["cached"]
            assert fast[code]["alias"] in ("champion", "challenger")
    finally:
        registry.set_alias(home, name, "champion", current.version, reason="test: back")
