"""The landing watcher's change detection: counts only, keyed tokens, settling files wait."""

from __future__ import annotations

import json
import os
import time

import pytest

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.landing.changes import look
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY


def _age(path, seconds: float = 60) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_new_changed_removed_are_counted_and_names_never_stored(tmp_path):
    landing, home, ps = tmp_path / "landing", Home.at(tmp_path / "home"), Pseudonymizer(TEST_KEY)
    (landing / "site_a").mkdir(parents=True)
    for name in ("Smith_John.csv", "b.dcm"):
        (landing / "site_a" / name).write_text(name)
        _age(landing / "site_a" / name)
    first = look(landing, home, ps)
    assert (first.files, first.new, first.changed, first.removed, first.arrived) == (2, 2, 0, 0, True)
    again = look(landing, home, ps)
    assert (again.new, again.changed, again.arrived) == (0, 0, False)

    (landing / "site_a" / "b.dcm").write_text("new content")
    _age(landing / "site_a" / "b.dcm", 30)
    (landing / "c.json").write_text("{}")
    _age(landing / "c.json")
    (landing / "site_a" / "Smith_John.csv").unlink()
    third = look(landing, home, ps)
    assert (third.files, third.new, third.changed, third.removed, third.arrived) == (2, 1, 1, 1, True)
    state = "".join(p.read_text() for p in (home.root / "watch").iterdir())
    assert "Smith" not in state and "site_a" not in state and str(landing) not in state
    assert len(json.loads(state)) == 2


def test_a_file_still_being_written_waits_for_the_next_look(tmp_path):
    landing, home, ps = tmp_path / "landing", Home.at(tmp_path / "home"), Pseudonymizer(TEST_KEY)
    landing.mkdir()
    (landing / "copying.dcm").write_bytes(b"partial")
    assert look(landing, home, ps, settle_s=3600).arrived is False
    _age(landing / "copying.dcm", 7200)
    settled = look(landing, home, ps, settle_s=3600)
    assert (settled.new, settled.arrived) == (1, True)


def test_missing_landing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedmetaError, match="landing folder does not exist"):
        look(tmp_path / "nowhere", Home.at(tmp_path / "home"), Pseudonymizer(TEST_KEY))
