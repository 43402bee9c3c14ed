"""Alias invariants (a version never holds both aliases), retirement, and the gate on estimates."""

from __future__ import annotations

import json

import pytest

from medmeta import registry
from medmeta.registry import Gate
from medmeta.registry.gate import decide
from tests.test_registry import card, tiny_net


def _both(home, name) -> bool:
    aliases = registry.read_aliases(home, name)
    return aliases["champion"] is not None and aliases["champion"] == aliases["challenger"]


def test_promoting_the_challenger_leaves_it_champion_only(tmp_path):
    """The issue's case: adapt published v2 as challenger, then pointed champion at it (both aliases)."""
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.8))
    second = registry.publish(tmp_path, "m", tiny_net(1).state_dict(), card(0.8))
    assert second.card["gate"]["decision"] == "challenger"
    aliases = registry.set_alias(tmp_path, "m", "champion", 2, reason="test: follow the parent")
    assert (aliases["champion"], aliases["challenger"]) == (2, None) and not _both(tmp_path, "m")
    assert "promoted" in aliases["history"][-1]["reason"]
    with pytest.raises(registry.InvalidCard, match="never its own challenger"):
        registry.set_alias(tmp_path, "m", "challenger", 2, reason="test: both")
    assert registry.read_aliases(tmp_path, "m")["challenger"] is None


def test_an_aliases_file_holding_both_reads_as_champion_only_and_is_repaired_on_the_next_write(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.8))
    registry.publish(tmp_path, "m", tiny_net(1).state_dict(), card(0.7))
    path = tmp_path / "registry" / "m" / "aliases.json"
    legacy = json.loads(path.read_text())
    legacy["champion"] = legacy["challenger"] = 2  # as written before the invariant
    path.write_text(json.dumps(legacy))
    assert (registry.read_aliases(tmp_path, "m")["champion"], registry.read_aliases(tmp_path, "m")["challenger"]) == (2, None)
    assert registry.list_models(tmp_path)[0]["challenger"] is None
    registry.publish(tmp_path, "m", tiny_net(2).state_dict(), card(0.1))
    written = json.loads(path.read_text())
    assert (written["champion"], written["challenger"]) == (2, 3)


def test_retire_clears_the_aliases_and_the_card_says_why_idempotently_until_a_new_version(tmp_path):
    registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.8))
    registry.publish(tmp_path, "m", tiny_net(1).state_dict(), card(0.7))
    why = "D57.1 now has enough cases to be meta-validated: split val"
    aliases = registry.retire(tmp_path, "m", reason=why, detail={"target": "D57.1", "split": "val"})
    assert (aliases["champion"], aliases["challenger"]) == (None, None)
    events = len(aliases["history"])
    assert len(registry.retire(tmp_path, "m", reason=why, detail={"target": "D57.1", "split": "val"})["history"]) == events
    with pytest.raises(registry.ModelNotFound, match="retired .*split val"):
        registry.resolve(tmp_path, "m@champion")
    found = registry.resolve(tmp_path, "m@1")
    assert found.card["retired"]["reason"] == why and found.card["retired"]["previous"] == {"champion": 1, "challenger": 2}
    assert "## Retired" in found.card_markdown() and why in found.card_markdown()
    with pytest.raises(registry.InvalidCard, match="set by the registry"):
        registry.publish(tmp_path, "m", tiny_net().state_dict(), card(0.8, retired={"reason": "forged"}))
    again = registry.publish(tmp_path, "m", tiny_net(2).state_dict(), card(0.5))
    assert again.card["gate"]["decision"] == "champion" and "retired" not in registry.resolve(tmp_path, "m@3").card
    assert registry.read_aliases(tmp_path, "m")["history"][-2]["event"] == "unretire"


def _estimate_card(mean: float, low: float, n: int) -> dict:
    return {"evaluation_id": "ev-own", "metrics": {"loo_accuracy": {"mean": mean, "ci_low": low, "ci_high": 1.0, "n": n}}}


@pytest.mark.parametrize("candidate, champion, decision", [
    ((1.0, 0.51, 4), (1.0, 0.34, 2), "champion"),  # same accuracy, more cases: a higher lower end
    ((1.0, 0.34, 2), (1.0, 0.51, 4), "challenger"),
    ((0.75, 0.30, 4), (0.75, 0.30, 4), "champion"),  # a tie: the newer version
    ((0.5, 0.15, 4), (1.0, 0.34, 2), "challenger"),
])
def test_the_estimate_rule_compares_lower_ends(candidate, champion, decision):
    gate = Gate(metric="loo_accuracy", rule="estimate")
    made = decide(gate, _estimate_card(*candidate), 1, _estimate_card(*champion), None)
    assert made["decision"] == decision and made["comparable"]
    assert "based on" in made["reason"]


def test_the_estimate_rule_without_an_estimate(tmp_path):
    gate = Gate(metric="loo_accuracy", rule="estimate")
    none = {"evaluation_id": "ev-own", "metrics": {"support_accuracy": 1.0}}
    assert decide(gate, none, 1, _estimate_card(1.0, 0.34, 2), None)["decision"] == "challenger"
    assert decide(gate, none, 1, none, None)["decision"] == "champion"
    assert decide(gate, _estimate_card(0.5, 0.1, 2), 1, none, None)["decision"] == "champion"
    first = registry.publish(tmp_path, "a", tiny_net().state_dict(), {**none, "algorithm": "protonet"}, gate=gate)
    assert first.card["gate"]["decision"] == "champion"
    with pytest.raises(registry.InvalidCard, match="rule"):
        Gate(rule="vibes")
