"""The arrival fast path (flows/arrival.py) on a real home the pipeline built: new rare-disease cases
get the champion adapted and published at once, with no training; new cases of known classes get a
warm-started model gated against the champion; an arrival with nothing new does nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from medmeta import registry
from medmeta.home import Home
from medmeta.synth.arrivals import write_new_cases
from medmeta.training.publish import registry_name
from tests.conftest import TEST_KEY, copy_home
from tests.pipeline_home import IMAGES, tiny_settings

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")
TASKSET = "disease-images-2w2s2q-seed0"
RARE = "I21.9"  # in the synthetic catalogue's long tail: never in a default cohort
KNOWN = "J18.9"  # the commonest disease: in the meta-learning splits
WARM_STEPS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory, cohort150):
    """cohort150's home and landing copied, the pipeline run once on them (protonet, tiny settings)."""
    from flows.pipeline import pipeline_flow

    base = tmp_path_factory.mktemp("arrival")
    home = copy_home(cohort150, base / "home")
    landing = shutil.copytree(cohort150.parent / "landing", base / "landing")
    config = base / "settings.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings([IMAGES], ["protonet"]), "arrival": {"warm_steps": WARM_STEPS}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        state = pipeline_flow(str(landing), str(home), str(config), return_state=True)
    assert state.is_completed(), state.message
    return {"home": Home(home), "landing": landing, "config": config}


def _arrive(world, cases: dict[str, int] | None, batch: int = 1) -> dict:
    """Drop new cases (``{disease: count}``; none for None) into the landing folder and run the arrival."""
    from flows.arrival import arrival_flow

    if cases:
        staging = world["landing"].with_name(f"staging{batch}")
        diseases = [code for code, n in cases.items() for _ in range(n)]
        for path in write_new_cases(staging, diseases, 1, batch=batch)["files"]:
            target = world["landing"] / path
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / path).rename(target)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        state = arrival_flow(str(world["landing"]), str(world["home"].root), str(world["config"]), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    recorded = json.loads((world["home"].runs / f"arrival-{summary['started']}.json").read_text())
    assert recorded["status"] == "completed" and recorded["durations_s"]["total"] > 0
    assert summary["registry"] == recorded["registry"]  # the flow's result holds the aliases too
    return summary


def _registry(home: Home) -> dict[str, list[int]]:
    return {name: registry.versions(home, name) for name in registry.model_names(home)}


def _trained(home: Home) -> set[str]:
    return {d.name for d in home.training.iterdir() if (d / "result.json").is_file()}


@pytest.fixture(scope="module")
def arrived(world):
    """One arrival of new cases of a rare disease and of a known one (one ingest: the tests' time),
    with what was there before it."""
    home = world["home"]
    champion = registry.resolve(home, f"{registry_name(TASKSET)}@champion")
    before = {"champion": champion, "registry": _registry(home), "trained": _trained(home)}
    return {"before": before, "summary": _arrive(world, {RARE: 3, KNOWN: 3}, batch=1)}


def test_new_rare_disease_cases_get_an_adapted_model_published_first_and_nothing_from_scratch(world, arrived):
    home, summary, champion = world["home"], arrived["summary"], arrived["before"]["champion"]
    [changes] = summary["tasksets"]
    assert RARE in changes["new_classes"] and RARE not in changes["grown_classes"]
    [entry] = [a for a in summary["adapted"] if a.get("target") == RARE]
    assert entry["cached"] is False and entry["parent"] == champion.ref
    adapted = registry.resolve(home, entry["ref"])
    assert adapted.card["parent"]["name"] == champion.name and adapted.card["parent"]["version"] == champion.version
    assert adapted.card["adaptation"]["target"] == RARE
    assert summary["registry"][adapted.name]["champion"] == adapted.version
    gate_metric = adapted.card["gate"]["metric"]
    assert gate_metric in adapted.card["metrics"] and gate_metric in entry["metrics"]  # its estimate, in the summary
    [warm] = summary["warm_starts"]
    assert 0 < summary["adapted_published_after_s"] < warm["published_after_s"]  # published before any training
    assert summary["models"] == []
    assert _trained(home) - arrived["before"]["trained"] == {warm["model"]}  # the warm start alone: no from scratch


def test_new_cases_of_known_classes_start_a_bounded_warm_start_gated_against_the_champion(world, arrived):
    home, summary, champion = world["home"], arrived["summary"], arrived["before"]["champion"]
    [changes] = summary["tasksets"]
    assert changes["grown_classes"][KNOWN]["after"] == changes["grown_classes"][KNOWN]["before"] + 3
    [warm] = summary["warm_starts"]
    assert warm["parent"] == champion.ref and warm["steps"] == WARM_STEPS and warm["trained"]
    assert f"-warm{WARM_STEPS}-" in warm["model"]
    result = json.loads((home.training / warm["model"] / "result.json").read_text())
    assert result["steps"] == WARM_STEPS
    assert result["warm_start"] == {"parent": champion.ref, "parent_weights_sha256": champion.card["weights"]["sha256"],
                                    "steps": WARM_STEPS}
    version = registry.resolve(home, warm["published"]["ref"])
    assert version.card["warm_start"]["parent"] == champion.ref and version.card["warm_start"]["steps"] == WARM_STEPS
    assert f"warm-started from {champion.ref} for {WARM_STEPS} steps" in version.card["purpose"]
    assert version.card["training"]["model"] == warm["model"] and version.card["training"]["steps"] == WARM_STEPS
    gate = version.card["gate"]
    assert gate["decision"] in ("champion", "challenger") and gate["decision"] == warm["published"]["decision"]
    assert version.version == arrived["before"]["registry"][registry_name(TASKSET)][-1] + 1
    assert {"ingest_and_validate", "tasksets", "adapt", "warm_start", "evaluate", "publish"} <= set(summary["durations_s"])


def test_an_arrival_with_nothing_new_does_nothing(world, arrived):
    home = world["home"]
    before, trained = _registry(home), _trained(home)
    summary = _arrive(world, None)
    assert summary["ingest"]["files_ingested"] == 0
    assert summary["warm_starts"] == [] and summary["models"] == []
    assert all(a.get("cached") for a in summary["adapted"] if "ref" in a)
    assert _registry(home) == before and _trained(home) == trained
