"""medmeta.landing: walking a landing folder or zip safely, and sniffing what each file is."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medmeta.errors import (
    BAD_ARCHIVE,
    EMPTY_FILE,
    NESTED_ARCHIVE,
    NOT_DICOM,
    SYMLINK_OUTSIDE_SOURCE,
    UNREADABLE,
    UNSUPPORTED_FILE_TYPE,
    ZIP_ENTRY_TOO_LARGE,
    ZIP_PATH_ESCAPE,
    ZIP_TOO_LARGE,
    MedmetaError,
    Rejected,
)
from medmeta.ingest.config import IngestConfig
from medmeta.landing.sniff import sniff
from medmeta.landing.walk import InputItem, _bounded_read, discover, read_item

CONFIG = IngestConfig()
MB = 1024 * 1024
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def _by_path(items: list[InputItem]) -> dict[str, InputItem]:
    return {item.logical_path: item for item in items}


def _code(item: InputItem) -> str | None:
    return item.problem.code if item.problem else None


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- folders ------------------------------------------------------------------------------------


def test_a_folder_lists_every_regular_file_sorted(tmp_path):
    source = tmp_path / "landing"
    _write(source / "b" / "2.csv", "a,b\n1,2\n")
    _write(source / "a.json", "{}")
    _write(source / ".hidden", "x")
    _write(source / "b" / "a" / "1.dcm", b"\0")
    items = discover(source, CONFIG)
    assert [item.logical_path for item in items] == [".hidden", "a.json", "b/2.csv", "b/a/1.dcm"]
    assert all(item.problem is None and item.member is None for item in items)
    assert _by_path(items)["b/2.csv"].size == 8
    assert read_item(_by_path(items)["b/2.csv"], CONFIG) == b"a,b\n1,2\n"


def test_discovery_is_deterministic(tmp_path):
    source = tmp_path / "landing"
    rng = random.Random(5)
    for index in rng.sample(range(1000), 60):
        _write(source / f"d{index % 7}" / f"f{index}.txt", str(index))
    _zip(source / "z.zip", {f"m{i}.txt": b"x" for i in rng.sample(range(100), 20)})
    first, second = discover(source, CONFIG), discover(source, CONFIG)
    assert first == second
    assert [item.logical_path for item in first] == sorted(item.logical_path for item in first)


def test_a_missing_source_is_an_error(tmp_path):
    with pytest.raises(MedmetaError):
        discover(tmp_path / "nowhere", CONFIG)


def test_a_file_over_max_file_bytes_is_refused_unread(tmp_path):
    source = tmp_path / "landing"
    _write(source / "big.csv", "x" * 2000)
    (item,) = discover(source, IngestConfig(max_file_bytes=1000))
    assert _code(item) == UNREADABLE and "max_file_bytes" in item.problem.message
    with pytest.raises(Rejected) as caught:
        read_item(item, CONFIG)
    assert caught.value.code == UNREADABLE


def test_a_file_removed_after_discovery_is_unreadable(tmp_path):
    source = tmp_path / "landing"
    path = _write(source / "gone.csv", "a,b\n")
    (item,) = discover(source, CONFIG)
    path.unlink()
    with pytest.raises(Rejected) as caught:
        read_item(item, CONFIG)
    assert caught.value.code == UNREADABLE


@pytest.mark.timeout(20)
def test_a_fifo_is_listed_as_unreadable_and_never_opened(tmp_path):
    source = tmp_path / "landing"
    source.mkdir()
    os.mkfifo(source / "pipe")
    (item,) = discover(source, CONFIG)
    assert _code(item) == UNREADABLE


# --- symlinks -----------------------------------------------------------------------------------


def test_symlinks_out_of_the_source_are_never_followed(tmp_path):
    source = tmp_path / "landing"
    elsewhere = _write(tmp_path / "elsewhere" / "secret.csv", "a,b\n")
    source.mkdir()
    (source / "hostname").symlink_to("/etc/hostname")
    (source / "secret.csv").symlink_to(elsewhere)
    (source / "outside_dir").symlink_to(elsewhere.parent, target_is_directory=True)
    (source / "via_dotdot").symlink_to("../elsewhere/secret.csv")
    items = _by_path(discover(source, CONFIG))
    assert {path: _code(item) for path, item in items.items()} == {
        "hostname": SYMLINK_OUTSIDE_SOURCE, "secret.csv": SYMLINK_OUTSIDE_SOURCE,
        "outside_dir": SYMLINK_OUTSIDE_SOURCE, "via_dotdot": SYMLINK_OUTSIDE_SOURCE,
    }
    for item in items.values():
        with pytest.raises(Rejected) as caught:
            read_item(item, CONFIG)
        assert caught.value.code == SYMLINK_OUTSIDE_SOURCE


def test_symlinks_inside_the_source(tmp_path):
    """A link to a file inside is read through; a link to a folder inside is skipped (no duplicates)."""
    source = tmp_path / "landing"
    _write(source / "real" / "a.csv", "a,b\n")
    (source / "link.csv").symlink_to(source / "real" / "a.csv")
    (source / "linked_folder").symlink_to(source / "real", target_is_directory=True)
    items = _by_path(discover(source, CONFIG))
    assert sorted(items) == ["link.csv", "real/a.csv"]
    assert items["link.csv"].problem is None and read_item(items["link.csv"], CONFIG) == b"a,b\n"


@pytest.mark.timeout(20)
def test_symlink_loops_do_not_hang(tmp_path):
    source = tmp_path / "landing"
    source.mkdir()
    (source / "a").symlink_to(source / "b")
    (source / "b").symlink_to(source / "a")
    (source / "self").symlink_to(source / "self")
    (source / "here").symlink_to(source, target_is_directory=True)
    (source / "up").symlink_to(tmp_path, target_is_directory=True)
    _write(source / "ok.csv", "a,b\n")
    items = _by_path(discover(source, CONFIG))
    assert {path: _code(item) for path, item in items.items()} == {
        "a": UNREADABLE, "b": UNREADABLE, "self": UNREADABLE, "up": SYMLINK_OUTSIDE_SOURCE, "ok.csv": None,
    }


# --- zip archives -------------------------------------------------------------------------------


def test_zip_archives_are_found_by_content_and_expanded(tmp_path):
    source = tmp_path / "landing"
    _zip(source / "imaging" / "c.zip", {"img/001.dcm": b"one", "img\\002.dcm": b"two", "img/": b""})
    _zip(source / "named.bin", {"x.csv": b"a,b\n"})
    _write(source / "fake.zip", "a,b\n1,2\n")
    items = _by_path(discover(source, CONFIG))
    assert sorted(items) == ["fake.zip", "imaging/c.zip/img/001.dcm", "imaging/c.zip/img/002.dcm", "named.bin/x.csv"]
    entry = items["imaging/c.zip/img/002.dcm"]
    assert entry.member == "img\\002.dcm" and entry.fs_path == source / "imaging" / "c.zip" and entry.size == 3
    assert read_item(entry, CONFIG) == b"two"
    assert read_item(items["fake.zip"], CONFIG) == b"a,b\n1,2\n"


def test_a_source_that_is_a_zip(tmp_path):
    archive = _zip(tmp_path / "c.zip", {"img/001.dcm": b"one", "notes/a.csv": b"a,b\n"})
    items = discover(archive, CONFIG)
    assert [item.logical_path for item in items] == ["c.zip/img/001.dcm", "c.zip/notes/a.csv"]
    assert [read_item(item, CONFIG) for item in items] == [b"one", b"a,b\n"]


def test_entries_that_escape_are_refused_and_nothing_is_written(tmp_path):
    source = tmp_path / "landing"
    names = ["../evil.txt", "/abs.txt", "C:\\win.txt", "a/../../b.txt", "ok\\..\\..\\x.txt", "fine/../../y.txt"]
    _zip(source / "e.zip", {**{name: b"evil" for name in names}, "good.txt": b"good"})
    before = _tree(tmp_path)
    items = discover(source, CONFIG)
    problems = {item.member: _code(item) for item in items}
    assert problems == {**{name: ZIP_PATH_ESCAPE for name in names}, "good.txt": None}
    for item in items:
        assert ".." not in item.logical_path.split("/") and item.logical_path.startswith("e.zip/")
        if item.problem:
            with pytest.raises(Rejected) as caught:
                read_item(item, CONFIG)
            assert caught.value.code == ZIP_PATH_ESCAPE
    assert _tree(tmp_path) == before
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs.txt").exists()


def _zero_entry_zip(path: Path, size: int) -> Path:
    """A zip with one deflated entry of ``size`` zero bytes, written in 1 MiB chunks."""
    zeros = bytes(MB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.bin", "w") as entry:
            for _ in range(size // MB):
                entry.write(zeros)
    return path


@pytest.fixture(scope="module")
def zeros_zip(tmp_path_factory) -> Path:
    return _zero_entry_zip(tmp_path_factory.mktemp("zeros") / "zeros.zip", 300 * MB)


def test_a_300_mb_entry_is_refused_without_inflating_it(zeros_zip):
    tracemalloc.start()
    try:
        for config in (CONFIG, IngestConfig(max_zip_entry_bytes=10 * MB)):
            (item,) = discover(zeros_zip, config)
            assert _code(item) == ZIP_ENTRY_TOO_LARGE and item.size == 300 * MB
            with pytest.raises(Rejected) as caught:
                read_item(item, config)
            assert caught.value.code == ZIP_ENTRY_TOO_LARGE
            # read_item checks the declared size again, whatever discovery was told
            (unchecked,) = discover(zeros_zip, IngestConfig(max_zip_entry_bytes=400 * MB))
            with pytest.raises(Rejected) as caught:
                read_item(unchecked, config)
            assert caught.value.code == ZIP_ENTRY_TOO_LARGE
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * MB


def test_the_streaming_read_stops_at_the_limit_whatever_the_header_says(zeros_zip):
    """zipfile itself stops at the declared size; the read loop also stops at the limit on its own."""
    tracemalloc.start()
    try:
        with zipfile.ZipFile(zeros_zip) as archive, archive.open("zeros.bin") as stream:
            with pytest.raises(Rejected) as caught:
                _bounded_read(stream, 10 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.code == ZIP_ENTRY_TOO_LARGE and peak < 50 * MB


def _patch_uncompressed_size(path: Path, name: str, size: int) -> None:
    """Make both headers of entry ``name`` declare ``size`` uncompressed bytes."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, info.header_offset + 22, size)  # local file header
    central = data.rfind(b"PK\x01\x02")  # the only entry's central directory header
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def test_an_entry_that_lies_about_its_size_is_never_inflated_past_it(tmp_path):
    """Declared 1 MB, holds 50 MB: the read stops at 1 MB, and the checksum then fails."""
    archive = _zero_entry_zip(tmp_path / "liar.zip", 50 * MB)
    _patch_uncompressed_size(archive, "zeros.bin", MB)
    (item,) = discover(archive, CONFIG)
    assert item.problem is None and item.size == MB
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as caught:
            read_item(item, CONFIG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.code == BAD_ARCHIVE and peak < 20 * MB


def test_a_nested_zip_is_refused(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("x.csv", "a,b\n")
    archive = _zip(tmp_path / "outer.zip", {"inner.bin": inner.getvalue(), "ok.csv": b"a,b\n"})
    items = _by_path(discover(archive, CONFIG))
    assert _code(items["outer.zip/inner.bin"]) == NESTED_ARCHIVE and _code(items["outer.zip/ok.csv"]) is None


def test_corrupt_archives_are_refused_whole(tmp_path):
    source = tmp_path / "landing"
    _write(source / "garbage.zip", b"PK\x03\x04" + random.Random(1).randbytes(5000))
    whole = _zip(tmp_path / "whole.zip", {f"f{i}.csv": random.Random(i).randbytes(2000) for i in range(5)})
    _write(source / "half.zip", whole.read_bytes()[: whole.stat().st_size // 2])
    items = _by_path(discover(source, CONFIG))
    assert {path: _code(item) for path, item in items.items()} == {"garbage.zip": BAD_ARCHIVE,
                                                                    "half.zip": BAD_ARCHIVE}
    with pytest.raises(Rejected) as caught:
        read_item(items["half.zip"], CONFIG)
    assert caught.value.code == BAD_ARCHIVE


def test_a_damaged_entry_is_bad(tmp_path):
    archive = _zip(tmp_path / "d.zip", {"a.csv": b"a,b\n" * 5000})
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo("a.csv")
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len("a.csv") + 10] ^= 0xFF  # a byte of the deflate stream
    archive.write_bytes(bytes(data))
    (item,) = discover(archive, CONFIG)
    with pytest.raises(Rejected) as caught:
        read_item(item, CONFIG)
    assert caught.value.code == BAD_ARCHIVE


def test_too_many_entries_or_bytes_refuse_the_archive(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"f{i}.csv": b"a,b\n" * 100 for i in range(5)})
    (item,) = discover(archive, IngestConfig(max_zip_entries=4))
    assert (item.logical_path, _code(item), item.member) == ("many.zip", ZIP_TOO_LARGE, None)
    (item,) = discover(archive, IngestConfig(max_zip_total_bytes=1000))
    assert _code(item) == ZIP_TOO_LARGE and "2000" in item.problem.message
    assert len(discover(archive, CONFIG)) == 5


def test_entries_zipfile_can_not_bound_or_decrypt_are_unreadable(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"a.csv": b"a,b\n"}, compression=zipfile.ZIP_BZIP2)
    (item,) = discover(archive, CONFIG)
    assert _code(item) == UNREADABLE and "compression" in item.problem.message
    archive = _zip(tmp_path / "e.zip", {"a.csv": b"a,b\n"}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | 1)
    archive.write_bytes(bytes(data))
    (item,) = discover(archive, CONFIG)
    assert _code(item) == UNREADABLE and "encrypted" in item.problem.message


def test_reading_many_entries_does_not_reparse_the_archive(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "many.zip", {f"f{i:05d}.csv": b"a,b\n" for i in range(5000)})
    items = discover(archive, CONFIG)
    opened = []
    real_zipfile = zipfile.ZipFile
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: opened.append(a) or real_zipfile(*a, **k))
    assert all(read_item(item, CONFIG) == b"a,b\n" for item in items)
    assert len(opened) <= 1, "the central directory is parsed once, not once per entry"


# --- sniff --------------------------------------------------------------------------------------


def _parquet_bytes() -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"patient": ["p1", "p2"], "age": [30, 40]}), out)
    return out.getvalue()


def _png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="PNG")
    return out.getvalue()


def _docx_like_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
    return out.getvalue()


@pytest.mark.parametrize("data, name, kind", [
    ((PYDICOM_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm", "dicom"),
    ((PYDICOM_FILES / "CT_small.dcm").read_bytes(), "no_extension_at_all", "dicom"),
    ((PYDICOM_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(), "raw.dcm", "dicom"),
    ((PYDICOM_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(), "raw", "dicom"),
    (b'{"resourceType": "Patient", "id": "1"}', "p.json", "json"),
    (b'{\n  "resourceType": "Bundle",\n  "entry": []\n}\n', "bundle.txt", "json"),
    (b'\xef\xbb\xbf[{"resourceType": "Patient"}, {"resourceType": "Patient"}]', "list.json", "json"),
    (b'{"resourceType": "Patient"}\n\n{"resourceType": "Observation"}\n', "x.json", "ndjson"),
    (b'  {"resourceType": "Patient"}\n', "one.ndjson", "ndjson"),
    (b"patient_id,age\np1,30\n", "table.txt", "csv"),
    (b"patient_id;age\np1;30\n", "table", "csv"),
    (b"patient_id\tage\np1\t30\n", "table.tsv", "csv"),
    ("nom;ville\nA;Besan\u00e7on\n".encode("latin-1"), "latin1.csv", "csv"),
    (b"patient_id\np1\n", "one_column.csv", "csv"),
    (_parquet_bytes(), "t.parquet", "parquet"),
    (_parquet_bytes(), "t.csv", "parquet"),
])
def test_sniff_decides_by_content(data, name, kind):
    assert sniff(data, name) == kind


@pytest.mark.parametrize("data, name, code", [
    (b"", "a.csv", EMPTY_FILE),
    (b" \n\t\r\n ", "a.json", EMPTY_FILE),
    (b"just some words\n", "scan.dcm", NOT_DICOM),
    (random.Random(2).randbytes(3000), "scan.dcm", NOT_DICOM),
    (b"just some words\n", "notes.txt", UNSUPPORTED_FILE_TYPE),
    (_png_bytes(), "image.png", UNSUPPORTED_FILE_TYPE),
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "r.pdf",
     UNSUPPORTED_FILE_TYPE),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + random.Random(3).randbytes(2000), "r.pdf", UNSUPPORTED_FILE_TYPE),
    (_docx_like_bytes(), "letter.docx", UNSUPPORTED_FILE_TYPE),
    (random.Random(4).randbytes(3000), "blob.bin", UNSUPPORTED_FILE_TYPE),
    ((PYDICOM_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(), "raw.txt", UNSUPPORTED_FILE_TYPE),
])
def test_sniff_refusals(data, name, code):
    with pytest.raises(Rejected) as caught:
        sniff(data, name)
    assert caught.value.code == code


def test_sniff_looks_at_a_prefix_only():
    # What follows the prefix (here binary garbage and NUL bytes) does not change the answer.
    tail = bytes(range(256)) * 4096 + b"\x00" * MB
    assert sniff(b"a,b\n" + b"1,2\n" * 10_000 + tail, "big.csv") == "csv"
    assert sniff(b"[" + b" " * (2 * MB) + tail, "big.json") == "json"


def test_sniff_agrees_with_the_real_dicom_files():
    """Every real DICOM file with a preamble sniffs as DICOM whatever its name."""
    for path in PYDICOM_FILES.glob("*.dcm"):
        data = path.read_bytes()
        if data[128:132] == b"DICM":
            assert sniff(data, "renamed.bin") == "dicom", path.name


def test_json_fixture_files_of_pydicom_sniff_as_json():
    data = (PYDICOM_FILES / "test1.json").read_bytes()
    json.loads(data)
    assert sniff(data, "test1.json") == "json"


def test_pool_chunks_put_the_largest_files_first_and_cover_every_item_once():
    from medmeta.ingest.pool import balanced_chunks
    from medmeta.landing.walk import InputItem

    sizes = [5, 900, 40, 40, 3000, 1, 1, 1, 700, 60]
    items = [InputItem(f"f{i}", Path(f"f{i}"), None, size) for i, size in enumerate(sizes)]
    chunks = balanced_chunks(items, workers=2)
    flat = [i for chunk in chunks for i in chunk]
    assert sorted(flat) == list(range(len(items)))  # every file once
    assert flat[0] == 4 and [sizes[i] for i in flat] == sorted(sizes, reverse=True)
    assert chunks[0] == [4]  # the largest alone: over a quarter of a worker's share
    assert all(len(c) <= 32 for c in balanced_chunks(items * 10, workers=2))


# --- issue 12: archives without aliases -----------------------------------------------------------


def _zip_members(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A zip holding ``members`` in order, duplicate names included (zipfile only warns of them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": the attack itself
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_members_of_the_same_name_are_each_read_by_their_index(tmp_path):
    archive = _zip_members(tmp_path / "d.zip", [("a.csv", b"a,b\n1,1\n"), ("a.csv", b"a,b\n2,2\n"),
                                                ("a.csv", b"a,b\n3,3\n")])
    items = discover(archive, CONFIG)
    assert len({item.logical_path for item in items}) == 3, "each member has its own logical path"
    assert sorted(read_item(item, CONFIG) for item in items) == [b"a,b\n1,1\n", b"a,b\n2,2\n", b"a,b\n3,3\n"]
    assert _by_path(items)["d.zip/a.csv"].member_index == 0, "the first member keeps the plain path"
    assert all(item.content_name == "a.csv" for item in items), "the name's ending still hints at the content"


def test_members_that_alias_after_normalisation_are_each_read(tmp_path):
    members = [("a/b.csv", b"one"), ("a/./b.csv", b"two"), ("a//b.csv", b"three"), ("A/B.csv", b"four")]
    items = discover(_zip_members(tmp_path / "n.zip", members), CONFIG)
    assert len(items) == 4 and len({item.logical_path for item in items}) == 4
    assert len({item.logical_path.casefold() for item in items}) == 4, "not even case folds two into one"
    assert sorted(read_item(item, CONFIG) for item in items) == sorted(data for _, data in members)
    assert all(item.problem is None for item in items)


def test_an_alias_suffix_never_collides_with_a_real_member(tmp_path):
    members = [("a.csv", b"one"), ("a.csv#1", b"two"), ("a.csv", b"three"), ("a.csv#2", b"four")]
    items = discover(_zip_members(tmp_path / "s.zip", members), CONFIG)
    assert len({item.logical_path.casefold() for item in items}) == 4
    assert sorted(read_item(item, CONFIG) for item in items) == sorted(data for _, data in members)


def test_an_archive_rewritten_after_discovery_is_refused_not_misread(tmp_path):
    """A member is found by its index; when that index now holds another name, nothing is read."""
    archive = _zip_members(tmp_path / "r.zip", [("a.csv", b"one"), ("b.csv", b"two")])
    items = discover(archive, CONFIG)
    _zip_members(archive, [("b.csv", b"two"), ("a.csv", b"one")])  # the same members, in the other order
    assert all(_raises_code(item, BAD_ARCHIVE) for item in items)


def _raises_code(item: InputItem, code: str) -> bool:
    with pytest.raises(Rejected) as caught:
        read_item(item, CONFIG)
    return caught.value.code == code


# --- issue 12: read what was checked --------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_file_swapped_for_a_fifo_after_discovery_is_unreadable_at_once(tmp_path):
    source = tmp_path / "landing"
    path = _write(source / "a.csv", "a,b\n1,2\n")
    (item,) = discover(source, CONFIG)
    path.unlink()
    os.mkfifo(path)
    assert _raises_code(item, UNREADABLE)


@pytest.mark.timeout(20)
def test_an_archive_swapped_for_a_fifo_after_discovery_is_unreadable_at_once(tmp_path):
    source = tmp_path / "landing"
    archive = _zip(source / "c.zip", {"a.csv": b"a,b\n"})
    (item,) = discover(source, CONFIG)
    archive.unlink()
    os.mkfifo(archive)
    assert _raises_code(item, UNREADABLE)


def test_a_file_swapped_for_a_symlink_out_of_the_source_is_refused_unread(tmp_path):
    source = tmp_path / "landing"
    secret = _write(tmp_path / "elsewhere" / "secret.csv", "mrn,name\n1,SECRET\n")
    path = _write(source / "a.csv", "a,b\n1,2\n")
    (item,) = discover(source, CONFIG)
    path.unlink()
    path.symlink_to(secret)
    assert _raises_code(item, SYMLINK_OUTSIDE_SOURCE)


def test_a_folder_swapped_for_a_symlink_out_of_the_source_is_refused_unread(tmp_path):
    source = tmp_path / "landing"
    _write(tmp_path / "elsewhere" / "a.csv", "mrn,name\n1,SECRET\n")
    _write(source / "sub" / "a.csv", "a,b\n1,2\n")
    (item,) = discover(source, CONFIG)
    (source / "sub" / "a.csv").unlink()
    (source / "sub").rmdir()
    (source / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert _raises_code(item, SYMLINK_OUTSIDE_SOURCE)


def test_an_archive_swapped_for_a_symlink_out_of_the_source_is_refused_unread(tmp_path):
    source = tmp_path / "landing"
    outside = _zip(tmp_path / "elsewhere" / "c.zip", {"a.csv": b"mrn,name\n1,SECRET\n"})
    archive = _zip(source / "c.zip", {"a.csv": b"a,b\n"})
    (item,) = discover(source, CONFIG)
    archive.unlink()
    archive.symlink_to(outside)
    assert _raises_code(item, SYMLINK_OUTSIDE_SOURCE)


def test_a_symlink_inside_the_source_swapped_to_point_outside_is_refused_unread(tmp_path):
    source = tmp_path / "landing"
    secret = _write(tmp_path / "elsewhere" / "secret.csv", "mrn,name\n1,SECRET\n")
    _write(source / "real.csv", "a,b\n1,2\n")
    (source / "link.csv").symlink_to(source / "real.csv")
    items = _by_path(discover(source, CONFIG))
    (source / "link.csv").unlink()
    (source / "link.csv").symlink_to(secret)
    assert _raises_code(items["link.csv"], SYMLINK_OUTSIDE_SOURCE)
    assert read_item(items["real.csv"], CONFIG) == b"a,b\n1,2\n"


@pytest.mark.timeout(20)
def test_a_source_file_that_is_a_fifo_is_unreadable(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    (item,) = discover(tmp_path / "pipe.csv", CONFIG)
    assert _code(item) == UNREADABLE


# --- issue 12: names that cannot crash anything -----------------------------------------------------


HOSTILE_NAMES = [b"\xff\xfe.csv", b"\x1b[2J\x1b[31mFAKE ok\n.csv", b"caf\xe9/latin1.csv", b"a\r\x07\x9b.csv"]


def _write_raw_name(folder: Path, raw: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(folder), raw)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def test_names_that_are_not_utf8_or_hold_controls_are_found_and_read(tmp_path):
    source = tmp_path / "landing"
    for index, raw in enumerate(HOSTILE_NAMES):
        _write_raw_name(source, raw, f"a,b\n{index},1\n".encode())
    archive_members = [(os.fsdecode(b"\x1b[31mred.csv"), b"a,b\n9,9\n")]
    _zip_members(source / "z.zip", archive_members)
    items = discover(source, CONFIG)
    assert sorted(os.fsencode(item.logical_path) for item in items if item.member is None) == sorted(HOSTILE_NAMES)
    assert sorted(read_item(item, CONFIG) for item in items) == sorted(
        [f"a,b\n{i},1\n".encode() for i in range(len(HOSTILE_NAMES))] + [b"a,b\n9,9\n"])
