"""Hostile landing zones through the real ingest flow (issue 12): file names that are not UTF-8
or hold control characters and ANSI escapes, a name at the file system's length limit, a FIFO,
zip members of one name and members that alias after normalisation. Nothing crashes, every file
and member is accounted for, a rerun changes nothing, and the quarantine folder is 0700."""

from __future__ import annotations

import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")

ISSUER = "urn:oid:1.2.3.4"


def _patients(first: int, count: int) -> bytes:
    """NDJSON of ``count`` FHIR Patients with MRNs first..first+count-1."""
    return "".join(json.dumps({"resourceType": "Patient", "id": f"p{n}", "gender": "female", "birthDate": "1970-01-01",
                               "identifier": [{"system": ISSUER, "value": f"MRN{n:04d}"}]}) + "\n"
                   for n in range(first, first + count)).encode()


def _write_raw(folder: Path, raw_name: bytes, data: bytes) -> None:
    """A file under ``folder`` whose name is exactly the bytes ``raw_name``."""
    path = os.path.join(os.fsencode(folder), raw_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as handle:
        handle.write(data)


# Plain files: raw name -> (data, expected: "ingested" or a quarantine reason code)
PLAIN = {
    b"\xff\xfe.ndjson": (_patients(0, 2), "ingested"),
    b"\x1b[2J\x1b[31mFAKE ok\n.ndjson": (_patients(2, 2), "ingested"),
    b"caf\xe9/\x1b[1Adata\x9b.ndjson": (_patients(4, 1), "ingested"),
    b"caf\xe9/garbage\xff.bin": (bytes(range(256)) * 4, "unsupported_file_type"),
    b"\x1b]0;title\x07\xfe\xff.dat": (b"", "empty_file"),
    b"x" * 245 + b"\xff.bin": (bytes(range(256)), "unsupported_file_type"),  # 250 bytes: at NAME_MAX's edge
    b"big\xff.ndjson": (b" " * 5000, "unreadable"),  # over max_file_bytes in the config: refused unread
}
# Zip members, in archive order: two of one name, three that alias once normalised, one differing in case.
MEMBERS = [("p.ndjson", _patients(10, 1)), ("p.ndjson", _patients(11, 1)), ("a/q.ndjson", _patients(12, 1)),
           ("a/./q.ndjson", _patients(13, 1)), ("a//q.ndjson", _patients(14, 1)), ("A/Q.ndjson", _patients(15, 1)),
           ("\x1b[31mred.ndjson", _patients(16, 1))]
PATIENTS = 12  # MRN0000-0004 in plain files, MRN0010-0016 in the archive
FIFO = b"\xfe\x1b[0mpipe.ndjson"  # never opened in a way that waits; quarantined unread


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    base = tmp_path_factory.mktemp("hostile")
    landing, home, config = base / "landing", base / "home", base / "ingest.yaml"
    config.write_text("max_file_bytes: 4096\n")
    for raw_name, (data, _) in PLAIN.items():
        _write_raw(landing, raw_name, data)
    os.mkfifo(os.path.join(os.fsencode(landing), FIFO))
    with zipfile.ZipFile(landing / "export.zip", "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": the attack itself
        for name, data in MEMBERS:
            archive.writestr(name, data)
    umask = os.umask(0)  # the quarantine folder is 0700 whatever the umask
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
            first = ingest_flow(str(landing), str(home), str(config), workers=2, run_validation=False)
            store_after_first = _tree(home / "store")
            again = ingest_flow(str(landing), str(home), str(config), workers=2, run_validation=False)
    finally:
        os.umask(umask)
    return landing, home, first, again, store_after_first


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_file_and_member_is_accounted_for(hostile):
    _, home, first, _, _ = hostile
    seen = len(PLAIN) + 1 + len(MEMBERS)  # the plain files, the FIFO, each zip member
    assert first["files_seen"] == seen
    assert first["files_ingested"] + first["files_unchanged"] + first["files_quarantined"] == seen
    assert first["files_ingested"] == sum(1 for _, want in PLAIN.values() if want == "ingested") + len(MEMBERS)
    assert first["patients"] == PATIENTS, "no member's rows were merged away by an alias"
    patients = pd.read_parquet(home / "store" / "patients.parquet")
    assert len(patients) == PATIENTS


def test_names_are_quarantined_with_their_reasons(hostile):
    from medmeta.ingest.summary import quarantined_names

    _, home, first, _, _ = hostile
    got = {os.fsencode(q["path"]): q["reason"].split(":", 1)[0] for q in quarantined_names(first)}
    want = {name: want for name, (_, want) in PLAIN.items() if want != "ingested"} | {FIFO: "unreadable"}
    assert got == want
    reasons = [json.loads(p.read_text(encoding="utf-8")) for p in (home / "quarantine").glob("*/reason.json")]
    assert len(reasons) == len(want)
    copied = [p for p in (home / "quarantine").glob("*/*") if p.name != "reason.json"]
    assert sorted(p.read_bytes() for p in copied) == sorted(  # each file that was read, never one refused unread
        PLAIN[name][0] for name, code in want.items() if code != "unreadable")
    assert all(p.name.isprintable() and len(os.fsencode(p.name)) <= 200 for p in copied)


def test_the_ledger_and_run_summaries_are_json_with_no_raw_escape(hostile):
    from medmeta.ingest.landings import landing_token
    from medmeta.pseudonyms import Pseudonymizer
    from tests.conftest import TEST_KEY

    landing, home, first, _, _ = hostile
    token = landing_token(landing, Pseudonymizer(TEST_KEY))
    ledger = json.loads((home / "ledger.json").read_text(encoding="utf-8"))["sources"][token]
    files = [entry for entry in ledger.values() if entry["status"] != "archive"]  # an archive's own stat aside
    assert len(files) == first["files_seen"]  # one path token per file and member, names or not UTF-8
    for path in [home / "ledger.json", *(home / "runs").glob("*.json")]:
        data = path.read_bytes()
        data.decode("utf-8")
        assert b"\x1b" not in data and b"\x07" not in data and b"\x9b" not in data


def test_a_rerun_changes_nothing(hostile):
    _, home, first, again, store_after_first = hostile
    assert again["files_seen"] == first["files_seen"]
    assert again["files_unchanged"] == first["files_ingested"] and again["files_ingested"] == 0
    assert again["quarantined"] == first["quarantined"]
    assert again["snapshot"] == first["snapshot"]
    assert _tree(home / "store") == store_after_first


def test_the_quarantine_folder_is_private_whatever_the_umask(hostile):
    _, home, _, _, _ = hostile
    folders = [home / "quarantine", *(p for p in (home / "quarantine").iterdir() if p.is_dir())]
    assert len(folders) > 1
    assert {oct(stat.S_IMODE(folder.stat().st_mode)) for folder in folders} == {oct(0o700)}
    files = [p for p in (home / "quarantine").rglob("*") if p.is_file()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o600)}
