"""What keeps a run adding a few files to a large home cheap (issue 13, incremental cost), checked for
what it must still mean: the images table's multiset digest (order-free, batching-free, one row
changes it) and the ledger's skip of files recorded exactly as they would be recorded again (a file
that changed is still recorded). Real files and real tables, no Prefect: milliseconds."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmeta.ingest.image_parts import ROW_HASH, STAGING_SCHEMA, multiset_digest, row_hashes
from medmeta.ingest.ledger import _LOADED, Ledger
from medmeta.ingest.outcome import INGESTED, QUARANTINED, UNCHANGED, FileOutcome
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY


def _rows(count: int, shard: str = "a.npy") -> pa.Table:
    columns = {}
    for field in STAGING_SCHEMA:
        if field.name == "shard":
            columns[field.name] = [shard] * count
        elif field.name == "shard_index":
            columns[field.name] = list(range(count))
        elif pa.types.is_string(field.type):
            columns[field.name] = [f"{field.name}-{n}" for n in range(count)]
        elif pa.types.is_date(field.type):
            columns[field.name] = [None] * count
        else:
            columns[field.name] = [n % 7 for n in range(count)]
    return pa.table(columns, schema=STAGING_SCHEMA)


def test_the_multiset_digest_is_the_sum_of_the_row_hashes_modulo_2_256():
    hashes = [hashlib.sha256(str(n).encode()).digest() for n in range(300)]
    expected = (sum(int.from_bytes(h, "big") for h in hashes) % 2**256).to_bytes(32, "big")
    assert multiset_digest(pa.array(hashes, ROW_HASH.type)) == expected
    shuffled = hashes[:]
    random.Random(1).shuffle(shuffled)
    chunked = pa.chunked_array([pa.array(shuffled[:100], ROW_HASH.type), pa.array(shuffled[100:], ROW_HASH.type)])
    assert multiset_digest(chunked) == expected  # any order, any chunking
    assert multiset_digest(pa.array(hashes[1:], ROW_HASH.type)) != expected  # one row less: another digest


def test_row_hashes_follow_content_not_where_the_pixels_sit():
    rows = _rows(5)
    moved = _rows(5, shard="b.npy").set_column(STAGING_SCHEMA.get_field_index("shard_index"), "shard_index",
                                               pa.array([9, 8, 7, 6, 5], pa.int32()))
    assert row_hashes(rows).equals(row_hashes(moved))
    changed = rows.set_column(STAGING_SCHEMA.get_field_index("pixel_min"), "pixel_min",
                              pa.array([0.5, 1, 2, 3, 4], pa.float32()))
    assert row_hashes(changed)[0] != row_hashes(rows)[0] and row_hashes(changed)[1:].equals(row_hashes(rows)[1:])
    nulls = rows.set_column(STAGING_SCHEMA.get_field_index("site"), "site", pa.array(["None"] * 5))
    with_null = rows.set_column(STAGING_SCHEMA.get_field_index("site"), "site", pa.array([None] * 5, pa.string()))
    assert row_hashes(nulls)[0] != row_hashes(with_null)[0]  # null is not the text "None"


def test_settled_files_recorded_as_before_are_not_to_record_and_a_changed_one_is_recorded(tmp_path):
    pseudo = Pseudonymizer(TEST_KEY)
    landing = tmp_path / "landing"
    landing.mkdir()
    old = time.time() - 60
    stats = {}
    for name in ("a.dcm", "b.dcm"):
        (landing / name).write_bytes(name.encode())
        os.utime(landing / name, (old, old))
        info = os.lstat(landing / name)
        stats[name] = (info.st_size, info.st_mtime_ns)
    staged = {"1" * 64, "2" * 64, "3" * 64}.__contains__
    ledger = Ledger(tmp_path / "ledger.json", pseudo)
    ledger.record(landing, [FileOutcome("a.dcm", INGESTED, "1" * 64), FileOutcome("b.dcm", INGESTED, "2" * 64)], stats)
    ledger.save()
    for to_record in (["a.dcm", "b.dcm"], []):  # ingested -> unchanged (recorded), then as recorded (nothing)
        ledger = Ledger.load(tmp_path / "ledger.json", pseudo)
        matcher = ledger.settled_matcher(landing, staged)
        assert matcher.match(list(stats), [s for s, _ in stats.values()], [m for _, m in stats.values()]) == \
            ["1" * 64, "2" * 64]
        assert [path for path, _, _, _ in matcher.to_record] == to_record
        before = (tmp_path / "ledger.json").stat().st_mtime_ns
        ledger.record(landing, [FileOutcome(path, UNCHANGED, sha) for path, sha, _, _ in matcher.to_record], stats)
        ledger.save()
    assert (tmp_path / "ledger.json").stat().st_mtime_ns == before, "a no-op rerun rewrites nothing"
    ledger = Ledger.load(tmp_path / "ledger.json", pseudo)
    matcher = ledger.settled_matcher(landing, staged)
    assert matcher("a.dcm", *stats["a.dcm"]) == "1" * 64
    # a.dcm was matched, but this run read it again and found new content (a caller that re-reads): recorded
    ledger.record(landing, [FileOutcome("a.dcm", INGESTED, "3" * 64)], {"a.dcm": stats["a.dcm"]})
    ledger.save()
    assert Ledger.load(tmp_path / "ledger.json", pseudo).active_hashes() == ["2" * 64, "3" * 64]


def test_the_active_hashes_kept_by_record_equal_the_ones_read_from_the_entries(tmp_path):
    """The ledger makes a SOURCE's settled hashes once (the matcher's staged check) and ``record`` keeps
    them current: after additions, a replaced content, a quarantined file whose content another file
    still holds and one whose content no file holds any more, they equal a fresh reading of the file."""
    pseudo = Pseudonymizer(TEST_KEY)
    landing = tmp_path / "landing"
    landing.mkdir()
    h = {n: str(n) * 64 for n in range(1, 7)}
    ledger = Ledger(tmp_path / "ledger.json", pseudo)
    ledger.record(landing, [FileOutcome("a", INGESTED, h[1]), FileOutcome("b", INGESTED, h[2]),
                            FileOutcome("c", INGESTED, h[2]), FileOutcome("d", INGESTED, h[3])])
    ledger.save()
    rounds = [
        [FileOutcome("e", INGESTED, h[4])],  # added
        [FileOutcome("a", INGESTED, h[5])],  # replaced: h1 held by no file now
        [FileOutcome("b", QUARANTINED, None, reason="x: y")],  # h2 still held by c
        [FileOutcome("d", QUARANTINED, None, reason="x: y")],  # h3 held by no file now
        [FileOutcome("f", UNCHANGED, h[6]), FileOutcome("c", UNCHANGED, h[2])],
    ]
    expected = [{h[1], h[2], h[3], h[4]}, {h[2], h[3], h[4], h[5]}, {h[2], h[3], h[4], h[5]}, {h[2], h[4], h[5]},
                {h[2], h[4], h[5], h[6]}]
    for outcomes, wanted in zip(rounds, expected):
        _LOADED.clear()
        ledger = Ledger.load(tmp_path / "ledger.json", pseudo)
        assert ledger.settled_matcher(landing, lambda sha: True).all_staged()  # makes the cached set
        ledger.record(landing, outcomes)
        assert ledger.active_hashes() == sorted(wanted)
        ledger.save()
        _LOADED.clear()
        assert Ledger.load(tmp_path / "ledger.json", pseudo).active_hashes() == sorted(wanted)


def test_a_few_changes_to_a_large_ledger_go_to_its_journal_and_read_back_the_same(tmp_path):
    from medmeta.ingest.ledger import JOURNAL_MIN_ENTRIES, journal_path

    pseudo = Pseudonymizer(TEST_KEY)
    landing, path = tmp_path / "landing", tmp_path / "ledger.json"
    landing.mkdir()
    old = time.time_ns() - 60 * 10**9
    count = JOURNAL_MIN_ENTRIES + 10
    names = [f"f{n:05d}.dcm" for n in range(count)]
    ledger = Ledger(path, pseudo)
    ledger.record(landing, [FileOutcome(name, INGESTED, f"{n:064x}") for n, name in enumerate(names)],
                  {name: (n, old) for n, name in enumerate(names)})
    ledger.save()
    assert not journal_path(path).exists(), "a new ledger is written whole"
    whole = path.read_bytes()
    ledger = Ledger.load(path, pseudo)
    ledger.record(landing, [FileOutcome("new.dcm", INGESTED, "f" * 64),
                            FileOutcome(names[0], QUARANTINED, None, reason="not_dicom: x")], {"new.dcm": (1, old)})
    ledger.save()
    assert path.read_bytes() == whole, "two changed entries of 4,106 are appended, the file is not rewritten"
    assert journal_path(path).read_bytes().count(b"\n") == 1
    expected = ledger.sources
    _LOADED.clear()
    again = Ledger.load(path, pseudo)
    assert again.sources == expected and len(again.active_hashes()) == count
    # a torn last line (a run killed while appending) is ignored; the lines before it still count
    with open(journal_path(path), "ab") as handle:
        handle.write(b'{"generation": "')
    _LOADED.clear()
    assert Ledger.load(path, pseudo).sources == expected
    # many changes: the whole file again, the journal gone; a stale journal of another generation is ignored
    stale = journal_path(path).read_bytes()
    ledger = Ledger.load(path, pseudo)
    ledger.record(landing, [FileOutcome(name, UNCHANGED, f"{n:064x}") for n, name in enumerate(names)],
                  {name: (n, old) for n, name in enumerate(names)})
    ledger.save()
    assert not journal_path(path).exists() and path.read_bytes() != whole
    expected = ledger.sources
    journal_path(path).write_bytes(stale)
    _LOADED.clear()
    assert Ledger.load(path, pseudo).sources == expected


_SOURCES = ("landing-a", "landing-b")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_SOURCES), st.integers(0, 5),
                          st.sampled_from([INGESTED, UNCHANGED, QUARANTINED]), st.integers(0, 4),
                          st.sampled_from(["none", "save", "reload"])), min_size=1, max_size=25),
       st.booleans())
def test_the_ledgers_active_digest_is_that_of_its_active_hashes(tmp_path, monkeypatch, steps, journal):
    """The ledger keeps the active set's digest by adding the terms of the hashes that join it (and makes it
    again from every hash when one may have left): after any run of outcomes over two SOURCEs, saved into
    the journal or whole and loaded again, it is the digest of ``active_hashes``; ``before`` is the digest
    when loaded, while the set only grew, and ``added`` what joined it since."""
    from medmeta.ingest import ledger as ledger_module
    from medmeta.ingest.active import ActiveSet

    monkeypatch.setattr(ledger_module, "JOURNAL_MIN_ENTRIES", 0 if journal else 10**9)
    monkeypatch.setattr(ledger_module, "JOURNAL_SHARE", 1)
    path = tmp_path / f"ledger-{random.random()}.json"
    pseudo = Pseudonymizer(TEST_KEY)
    _LOADED.clear()
    ledger = Ledger.load(path, pseudo)
    loaded = ActiveSet.of(ledger.active_hashes(), pseudo)
    for source, file, status, content, then in steps:
        sha256 = hashlib.sha256(str(content).encode()).hexdigest()
        ledger.record(tmp_path / source, [FileOutcome(f"f{file}", status, sha256)])
        active = ledger.active()
        expected = ActiveSet.of(ledger.active_hashes(), pseudo)
        assert (active.digest, active.count) == (expected.digest, expected.count)
        if active.before is not None:
            assert active.before == loaded.digest and set(expected.hashes()) == set(loaded.hashes()) | active.added
        if then != "none":
            ledger.save()
        if then == "reload":
            _LOADED.clear()
            ledger = Ledger.load(path, pseudo)
            loaded = ActiveSet.of(ledger.active_hashes(), pseudo)
            assert ledger.active().digest == loaded.digest and ledger.active().before == loaded.digest
