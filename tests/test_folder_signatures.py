"""A folder every file of which a run found settled is signed (a keyed token of its listing: names,
sizes, mtimes) and a later run whose listing of it gives the same signature counts its files unchanged
without a token or a ledger lookup per file. Anything that could make one of its files other than
settled (a file changed, added, removed, its content no longer staged, a run that reads every file
again) makes the folder's files be matched one by one again. No name is stored in clear. Real files,
the real ledger and discovery; no Prefect."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from medmeta.ingest.config import IngestConfig
from medmeta.ingest.ledger import _LOADED, Ledger, item_stats
from medmeta.ingest.outcome import INGESTED, UNCHANGED, FileOutcome
from medmeta.landing.walk import discover
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY

FOLDERS = {"Quenneville_Orsolya": 5, "Marrowgate_Ysolde": 4}  # marker names: must not reach the ledger


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    old = time.time() - 60
    for folder, count in FOLDERS.items():
        (landing / folder).mkdir(parents=True)
        for n in range(count):
            path = landing / folder / f"Fairweather_{n}.dcm"
            path.write_bytes(f"{folder}-{n}".encode())
            os.utime(path, (old, old))
    top = landing / "Dunsinane_top.dcm"
    top.write_bytes(b"top")
    os.utime(top, (old, old))
    return landing


def _run(landing: Path, ledger_path: Path, staged=lambda sha256: True, reread: bool = False,
         staging: str | None = None):
    """One ingest's ledger work, as tasks/ingest.py does it: discovery with the matcher, each item
    ingested (content hash of its bytes), the outcomes and signatures recorded and saved. ``staging``:
    the staging's listing digest (``image_parts.staging_listing``; none staged here), claimed after the
    run when every settled entry was found staged."""
    _LOADED.clear()
    config, pseudo = IngestConfig(), Pseudonymizer(TEST_KEY)
    ledger = Ledger.load(ledger_path, pseudo)
    settled, matcher = [], None
    if reread:
        items = discover(landing, config)
    else:
        matcher = ledger.settled_matcher(Path(os.path.realpath(landing)), staged, staging=staging)
        items = discover(landing, config, matcher, settled)
    outcomes = [FileOutcome(item.logical_path, INGESTED, hashlib.sha256(item.fs_path.read_bytes()).hexdigest())
                for item in items]
    stats = item_stats(items)
    if matcher is not None:
        outcomes += [FileOutcome(path, UNCHANGED, sha) for path, sha, _, _ in matcher.to_record]
        stats.update((path, (size, mtime)) for path, _, size, mtime in matcher.to_record)
    claim = staging if matcher is not None and staging is not None and matcher.all_staged() else None
    ledger.record(Path(os.path.realpath(landing)), outcomes, stats, matcher.signatures if matcher else None,
                  staged_after=claim)
    ledger.save()
    in_folders = matcher.settled_in_folders if matcher else 0
    return {"items": sorted(item.logical_path for item in items), "per_file": len(settled), "in_folders": in_folders,
            "unchanged": len(settled) + in_folders}


def test_a_settled_folder_is_counted_whole_and_every_file_is_accounted_for(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    total = sum(FOLDERS.values()) + 1
    first = _run(landing, ledger_path)
    assert len(first["items"]) == total and first["unchanged"] == 0
    second = _run(landing, ledger_path)  # every file matched one by one: each folder signed
    assert second == {"items": [], "per_file": total, "in_folders": 0, "unchanged": total}
    third = _run(landing, ledger_path)
    assert third == {"items": [], "per_file": 0, "in_folders": total, "unchanged": total}
    assert _run(landing, ledger_path) == third, "a settled folder stays signed"


def test_a_changed_added_or_removed_file_makes_its_folder_matched_file_by_file(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    for _ in range(3):
        _run(landing, ledger_path)
    changed = landing / "Quenneville_Orsolya" / "Fairweather_1.dcm"
    changed.write_bytes(b"new content")
    os.utime(changed, (time.time() - 30, time.time() - 30))
    run = _run(landing, ledger_path)
    assert run["items"] == ["Quenneville_Orsolya/Fairweather_1.dcm"], "the changed file is read again"
    assert run["per_file"] == 4 and run["in_folders"] == 5 and run["unchanged"] == 9
    assert _run(landing, ledger_path)["per_file"] == 5, "settled again: signed again"
    assert _run(landing, ledger_path)["in_folders"] == 10

    added = landing / "Marrowgate_Ysolde" / "Fairweather_9.dcm"
    added.write_bytes(b"added")
    os.utime(added, (time.time() - 30, time.time() - 30))
    run = _run(landing, ledger_path)
    assert run["items"] == ["Marrowgate_Ysolde/Fairweather_9.dcm"] and run["per_file"] == 4
    _run(landing, ledger_path)
    (landing / "Marrowgate_Ysolde" / "Fairweather_0.dcm").unlink()
    run = _run(landing, ledger_path)
    assert run["items"] == [] and run["per_file"] == 4 and run["in_folders"] == 6


def test_content_no_longer_staged_or_a_run_that_rereads_every_file_drops_the_folder_signatures(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    for _ in range(3):
        _run(landing, ledger_path)
    gone = hashlib.sha256(b"Marrowgate_Ysolde-2").hexdigest()
    run = _run(landing, ledger_path, staged=lambda sha256: sha256 != gone)
    assert run["in_folders"] == 0 and run["items"] == ["Marrowgate_Ysolde/Fairweather_2.dcm"]
    run = _run(landing, ledger_path)  # the other folders were signed file by file meanwhile
    assert run["per_file"] == 4 and run["in_folders"] == 6
    assert _run(landing, ledger_path)["in_folders"] == 10
    _run(landing, ledger_path, reread=True)
    assert list(Ledger.load(ledger_path, Pseudonymizer(TEST_KEY)).folders.values()) == [{}]
    assert _run(landing, ledger_path)["in_folders"] == 0, "after a run that read every file, file by file again"


def test_a_claim_that_the_content_is_staged_holds_for_the_same_entries_and_staging_only(tmp_path):
    """A run that found every settled entry's content staged claims it in the ledger for the entries it
    leaves and the staging's listing: the next run over the same listing asks no content hash; a listing
    that changed (a staged file gone), or entries changed by a run that made no claim, are checked again."""
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    source, pseudo = Path(os.path.realpath(landing)), Pseudonymizer(TEST_KEY)
    for _ in range(3):
        _run(landing, ledger_path, staging="listing-1")
    asked: list[str] = []

    def staged(sha256: str) -> bool:
        asked.append(sha256)
        return True

    def check(staging: str) -> bool:
        _LOADED.clear()
        return Ledger.load(ledger_path, pseudo).settled_matcher(source, staged, staging=staging).all_staged()

    assert check("listing-1") and asked == [], "claimed: no content hash asked"
    assert check("listing-2") and len(set(asked)) == sum(FOLDERS.values()) + 1, "another staging: each one asked"
    gone = hashlib.sha256(b"Quenneville_Orsolya-3").hexdigest()
    run = _run(landing, ledger_path, staged=lambda sha256: sha256 != gone, staging="listing-2")
    assert run["items"] == ["Quenneville_Orsolya/Fairweather_3.dcm"] and run["in_folders"] == 0, \
        "the content lost under a claim is found and read again"
    for _ in range(2):
        _run(landing, ledger_path, staging="listing-2")
    asked.clear()
    assert check("listing-2") and asked == []
    changed = landing / "Marrowgate_Ysolde" / "Fairweather_0.dcm"
    changed.write_bytes(b"changed")
    os.utime(changed, (time.time() - 30, time.time() - 30))
    _run(landing, ledger_path)  # entries changed, no claim made
    assert check("listing-2") and asked, "entries changed since the claim: checked again"


def test_the_ledger_holds_keyed_tokens_only(tmp_path):
    landing, ledger_path = _landing(tmp_path), tmp_path / "ledger.json"
    for _ in range(3):
        _run(landing, ledger_path)
    data = ledger_path.read_bytes() + (ledger_path.with_name("ledger.json.journal").read_bytes()
                                       if ledger_path.with_name("ledger.json.journal").exists() else b"")
    for needle in ("Quenneville", "Orsolya", "Marrowgate", "Ysolde", "Fairweather", "Dunsinane", "landing"):
        assert needle.encode() not in data
    [folders] = Ledger.load(ledger_path, Pseudonymizer(TEST_KEY)).folders.values()
    assert len(folders) == 3  # the two folders and the landing's top level, each by its path token
    for token, signature in folders.items():
        assert len(token) == len(signature) == 32 and int(token, 16) >= 0 and int(signature, 16) >= 0
