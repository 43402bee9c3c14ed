"""Adapted models from the real pipeline: one per rare disease and rare drug, linked to the champion,
holding no patient inputs, predicting what adapting the parent predicts, and never published twice."""

from __future__ import annotations

import pytest
import torch

from medmeta import registry
from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.tasksets.store import load_taskset
from medmeta.training.adapt import _gather, adapted_name, check_no_inputs, plan_adaptations
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
    assert any(_published(built, DRUG_SET)), "at least one rare drug has both outcomes"


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
    for a in renewed:
        found = registry.resolve(home, f"{a['name']}@champion")
        assert found.version == a["version"] == len(before[a["name"]]) + 1
        assert found.card["parent"]["version"] == other
    registry.set_alias(home, name, "champion", aliases["champion"], reason="test: back")


def test_a_state_shaped_like_the_inputs_is_refused():
    x = torch.zeros(4, 1, 8, 8)
    check_no_inputs({"params.w": torch.zeros(3, 1, 3, 3)}, x)
    with pytest.raises(MedmetaError, match="shaped like patient inputs"):
        check_no_inputs({"params.w": torch.zeros(3), "leak": x.clone()}, x)
