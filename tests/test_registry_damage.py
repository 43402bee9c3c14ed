"""A damaged registry entry is reported, not fatal: through the real ``medmeta models list|show``,
a truncated card, a truncated aliases file, a card swapped for a FIFO or for another version's, and
weights cut short are each named with their reason and fix, while every healthy model stays listed.

``models list`` exits 1 when anything is damaged (0 otherwise); ``models show`` of a damaged entry
prints one line and exits 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from medmeta import registry
from medmeta.registry import Gate
from tests.test_cli import run_cli


def publish(home: Path, name: str, scores: tuple[float, ...]) -> None:
    for score in scores:
        registry.publish(home, name, {"w": torch.ones(3, 2) * score},
                         {"algorithm": "protonet", "evaluation_id": "ev-1", "metrics": {"accuracy": score}},
                         gate=Gate("accuracy", margin=0.0))


def truncate(path: Path) -> None:
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def version_dir(home: Path, name: str, version: int) -> Path:
    return home / "registry" / name / "versions" / str(version)


def one_line(result) -> str:
    assert result.returncode == 2 and result.stdout == "", result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.fixture
def damaged_home(tmp_path) -> Path:
    """healthy (1 champion), card-challenger (v2's card truncated), card-champion (v1 = champion,
    truncated), aliases (aliases.json truncated), weights-short (v1's weights cut in half)."""
    home = tmp_path / "home"
    publish(home, "healthy", (0.5,))
    publish(home, "card-challenger", (0.6, 0.55))
    publish(home, "card-champion", (0.7, 0.65))
    publish(home, "aliases", (0.5, 0.8))
    publish(home, "weights-short", (0.5,))
    truncate(version_dir(home, "card-challenger", 2) / "card.json")
    truncate(version_dir(home, "card-champion", 1) / "card.json")
    truncate(home / "registry" / "aliases" / "aliases.json")
    truncate(version_dir(home, "weights-short", 1) / "model.safetensors")
    return home


def test_models_list_shows_every_healthy_model_and_names_each_damaged_file(damaged_home):
    result = run_cli("models", "list", "--home", str(damaged_home), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "5 damaged registry files" not in result.stderr and "4 damaged registry files" in result.stderr
    out = json.loads(result.stdout)
    assert [m["name"] for m in out["models"]] == ["card-challenger", "healthy", "weights-short"]
    listed = {m["name"]: m for m in out["models"]}
    assert (listed["card-challenger"]["champion"], listed["card-challenger"]["metric"]["value"]) == (1, 0.6)
    damaged = {(d["name"], d["version"]): d for d in out["damaged"]}
    assert set(damaged) == {("card-challenger", 2), ("card-champion", 1), ("aliases", None), ("weights-short", 1)}
    card = damaged[("card-challenger", 2)]
    assert card["file"] == str(version_dir(damaged_home, "card-challenger", 2) / "card.json")
    assert card["reason"].startswith("not valid JSON (") and "truncated or edited?" in card["reason"]
    assert "move it out of versions/" in card["fix"]
    assert damaged[("aliases", None)]["file"].endswith("registry/aliases/aliases.json")
    assert "rebuilt from the cards' gate decisions" in damaged[("aliases", None)]["fix"]
    assert "but its card records" in damaged[("weights-short", 1)]["reason"]

    human = run_cli("models", "list", "--home", str(damaged_home))
    assert human.returncode == 1
    assert "healthy: versions 1; champion 1, challenger -; protonet, accuracy 0.5" in human.stdout
    assert "DAMAGED card-champion version 1: " in human.stdout and "DAMAGED aliases: " in human.stdout


def test_models_show_of_a_damaged_entry_is_one_line_and_the_rest_still_shows(damaged_home):
    line = one_line(run_cli("models", "show", "card-champion", "--home", str(damaged_home)))
    assert line.startswith("error: ") and "card-champion/versions/1/card.json is damaged: not valid JSON" in line
    assert "aliases.json is damaged" in one_line(run_cli("models", "show", "aliases@1", "--home", str(damaged_home)))
    assert "card.json is damaged" in one_line(run_cli("models", "show", "card-challenger@challenger", "--home",
                                                      str(damaged_home), "--json"))
    shown = run_cli("models", "show", "card-champion@2", "--home", str(damaged_home), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["card"]["metrics"]["accuracy"] == 0.65
    with pytest.raises(registry.DamagedEntry, match="holds .* bytes, but its card records"):
        registry.load(damaged_home, "weights-short")


def test_moving_damaged_aliases_aside_rebuilds_them_from_the_cards(damaged_home):
    folder = damaged_home / "registry" / "aliases"
    os.rename(folder / "aliases.json", folder / "aliases.json.damaged")
    out = json.loads(run_cli("models", "list", "--home", str(damaged_home), "--json").stdout)
    rebuilt = next(m for m in out["models"] if m["name"] == "aliases")
    assert (rebuilt["champion"], rebuilt["challenger"]) == (2, None)  # 0.8 beat 0.5
    publish(damaged_home, "aliases", (0.9,))  # and publishing works again
    assert registry.read_aliases(damaged_home, "aliases")["champion"] == 3


@pytest.mark.timeout(120)
def test_a_card_swapped_for_a_fifo_or_another_versions_card_is_named(tmp_path):
    home = tmp_path / "home"
    publish(home, "m", (0.5, 0.6, 0.7))
    fifo_card = version_dir(home, "m", 1) / "card.json"
    fifo_card.unlink()
    os.mkfifo(fifo_card)
    copied = version_dir(home, "m", 2) / "card.json"
    os.chmod(copied, 0o644)
    shutil.copy(version_dir(home, "m", 3) / "card.json", copied)
    (version_dir(home, "m", 3) / "card.md").unlink()
    result = run_cli("models", "list", "--home", str(home), "--json", timeout=60)
    assert result.returncode == 1, result.stderr
    reasons = {d["version"]: d["reason"] for d in json.loads(result.stdout)["damaged"]}
    assert reasons == {1: "is a FIFO (named pipe), not a regular file",
                       2: "it is the card of 'm' version 3, not of this folder's model and version"}
    assert "card.md is damaged: no such file" in one_line(run_cli("models", "show", "m@3", "--home", str(home)))
    assert run_cli("models", "show", "m@3", "--home", str(home), "--json").returncode == 0


def test_a_healthy_registry_lists_with_exit_0_and_no_damaged_entries(tmp_path):
    publish(tmp_path, "m", (0.5,))
    result = run_cli("models", "list", "--home", str(tmp_path), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["damaged"] == []
