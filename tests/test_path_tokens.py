"""File, folder, zip member and landing folder names never reach the home (quarantine aside), the
Prefect database or the logs; the operator sees them on the terminal only, escaped.

The landing folder is laid out like a real export: Synthea names its bundles
``<Given>_<Family>_<uuid>.json`` after the patient. Real bundles from ../shared/realdata are copied
under such names (with marker names), in a folder and a zip archive whose names are markers too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.phi_search import leaks
from tests.realdata import BUNDLES_100P, REALDATA, needs_realdata

ROOT = Path(__file__).resolve().parents[1]
LANDING_MARK = "Wexfordlanding"
FOLDER = "Brackwater_Thistledown"
ARCHIVE = "Halloran_Pemberley.zip"
FORGED = "FORGED: 0 files quarantined"
ANSI_NAME = f"\x1b[2K\x1b[1G{FORGED}\nreal.csv"  # clears the line, writes at its start, starts another


def _ids() -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in ("plain", "folder", "member", "broken")}


IDS = _ids()
NAMES = {
    "plain": f"Orsolya_Quenneville_{IDS['plain']}.json",
    "folder": f"{FOLDER}/Ysolde_Marrowgate_{IDS['folder']}.json",
    "member": f"records/Ignatius_Fairweather_{IDS['member']}.json",
    "broken": f"Perpetua_Dunsinane_{IDS['broken']}.json",
}
NEEDLES = [LANDING_MARK, "Orsolya", "Quenneville", "Brackwater", "Thistledown", "Ysolde", "Marrowgate", "Halloran",
           "Pemberley", "Ignatius", "Fairweather", "Perpetua", "Dunsinane", FORGED, *IDS.values()]


def _small_patient_bundles(count: int) -> list[bytes]:
    """The ``count`` smallest patient bundles of the Synthea export (each one patient's whole record)."""
    with zipfile.ZipFile(REALDATA / BUNDLES_100P) as archive:
        patients = sorted((info.file_size, info.filename) for info in archive.infolist()
                          if info.filename.endswith(".json") and "Information" not in info.filename)
        return [archive.read(name) for _, name in patients[:count]]


def marked_landing(base: Path) -> Path:
    """A landing folder named with a marker: bundles under patient-style names, one in a marked
    folder, one as a marked zip member of a marked archive, a broken bundle and an ANSI-escape name."""
    landing = base / f"{LANDING_MARK}_export"
    (landing / FOLDER).mkdir(parents=True)
    plain, in_folder, in_zip = _small_patient_bundles(3)
    (landing / NAMES["plain"]).write_bytes(plain)
    (landing / NAMES["folder"]).write_bytes(in_folder)
    with zipfile.ZipFile(landing / ARCHIVE, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(NAMES["member"], in_zip)
    (landing / NAMES["broken"]).write_text('{"resourceType": "Bundle", "entry": [')
    (landing / ANSI_NAME).write_text("not,a,known\nlayout,at,all\n")
    return landing


def _tokens(landing: Path) -> dict[str, str]:
    from medmeta.pseudonyms import Pseudonymizer

    pseudo = Pseudonymizer(TEST_KEY)
    logical = {**{k: v for k, v in NAMES.items() if k != "member"}, "member": f"{ARCHIVE}/{NAMES['member']}",
               "ansi": ANSI_NAME}
    return {key: pseudo.path_token(path) for key, path in logical.items()}


@needs_realdata
@pytest.mark.usefixtures("pseudonym_key")
def test_names_of_a_real_export_reach_neither_the_home_nor_prefect(prefect_api, tmp_path, caplog, capfd):
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline_flow

    landing = marked_landing(tmp_path)
    home = tmp_path / "home"
    caplog.set_level(logging.DEBUG)
    summary = ingest_flow(str(landing), str(home))
    pipeline = pipeline_flow(str(landing), str(home), return_state=True)  # the landing as a subflow's parameter

    out, err = capfd.readouterr()
    assert leaks(NEEDLES, home=home, prefect_db=prefect_api,
                 texts={"stdout": out, "stderr": err, "log records": caplog.text}) == {}
    assert summary["files_seen"] == 5 and summary["files_ingested"] == 3 and summary["patients"] == 3
    tokens = _tokens(landing)
    assert sorted(q["token"] for q in summary["quarantined"]) == sorted([tokens["broken"], tokens["ansi"]])
    assert pipeline.is_final()
    ledger = json.loads((home / "ledger.json").read_text())
    [(source, entries)] = ledger["sources"].items()
    files = {token for token, entry in entries.items() if entry["status"] != "archive"}  # an archive's stat aside
    assert ledger["version"] == 2 and files == set(tokens.values())


def _cli_env() -> dict[str, str]:
    """The embedded Prefect server keeps its database in the home, where the leak search looks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(ROOT)
    env["MEDMETA_PSEUDONYM_KEY"] = TEST_KEY
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, cwd=ROOT,
                          env=_cli_env(), timeout=600)


@needs_realdata
@pytest.mark.slow
def test_the_operator_sees_the_names_on_the_terminal_only_and_escaped(tmp_path):
    from medmeta.landing.names import display_name

    landing = marked_landing(tmp_path)
    home = tmp_path / "home"
    shown = _cli("ingest", str(landing), "--home", str(home))
    again = _cli("ingest", str(landing), "--home", str(home), "--json")

    assert shown.returncode == 0, shown.stderr.decode(errors="replace")[-3000:]
    out = shown.stdout.decode()
    assert f"quarantined {NAMES['broken']}: " in out
    assert f"quarantined {display_name(ANSI_NAME)}: " in out and "\\x1b[2K\\x1b[1G" in out
    assert b"\x1b" not in shown.stdout, "no escape sequence reaches the terminal"
    assert not [line for line in out.splitlines() if line.startswith(FORGED)], "no forged line"
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
    result = json.loads(again.stdout)
    assert result["files_unchanged"] == 3 and result["files_ingested"] == 0
    assert {q["path"] for q in result["quarantined"]} == {NAMES["broken"], display_name(ANSI_NAME)}
    assert all(len(q["token"]) == 32 for q in result["quarantined"])
    assert leaks(NEEDLES, home=home) == {}, "the home, its Prefect database and WAL hold no name"
    runs = sorted((home / "runs").glob("ingest-*.json"))
    assert len(runs) == 2 and all("token" in q for q in json.loads(runs[-1].read_text())["quarantined"])


# -- the ledger ----------------------------------------------------------------------------------

def _patients_ndjson(first: int, count: int) -> str:
    return "".join(json.dumps({"resourceType": "Patient", "id": f"p{n}", "gender": "female", "birthDate": "1970-01-01",
                               "identifier": [{"system": "urn:oid:1.2.3", "value": f"MRN{n:04d}"}]}) + "\n"
                   for n in range(first, first + count))


def test_a_version_1_ledger_is_tokenised_when_loaded(tmp_path):
    from medmeta.ingest.ledger import Ledger
    from medmeta.pseudonyms import Pseudonymizer

    pseudo = Pseudonymizer(TEST_KEY)
    landing = str((tmp_path / f"{LANDING_MARK}_export").resolve())
    v1 = {"version": 1, "sources": {landing: {
        NAMES["plain"]: {"sha256": "a" * 64, "status": "ingested"},
        NAMES["broken"]: {"sha256": "b" * 64, "status": "quarantined", "reason": "malformed_json: bad"}}}}
    (tmp_path / "ledger.json").write_text(json.dumps(v1))

    ledger = Ledger.load(tmp_path / "ledger.json", pseudo)
    [(plain, ingested), (broken, quarantined)] = v1["sources"][landing].items()
    assert ledger.sources == {pseudo.path_token(landing): {pseudo.path_token(plain): ingested,
                                                           pseudo.path_token(broken): quarantined}}
    assert ledger.active_hashes() == ["a" * 64]
    ledger.save()
    assert json.loads((tmp_path / "ledger.json").read_text())["version"] == 2
    assert leaks(NEEDLES, home=tmp_path) == {}


@pytest.mark.usefixtures("pseudonym_key")
def test_a_rerun_on_a_home_with_a_version_1_ledger_finds_every_file_unchanged(prefect_api, tmp_path):
    from flows.ingest import ingest_flow
    from medmeta.pseudonyms import Pseudonymizer

    landing, home = tmp_path / f"{LANDING_MARK}_export", tmp_path / "home"
    names = [f"{FOLDER}/Ysolde_Marrowgate_{IDS['folder']}.ndjson", NAMES["plain"].replace(".json", ".ndjson")]
    for n, name in enumerate(names):
        (landing / name).parent.mkdir(parents=True, exist_ok=True)
        (landing / name).write_text(_patients_ndjson(3 * n, 3))
    first = ingest_flow(str(landing), str(home), run_validation=False)
    v2 = json.loads((home / "ledger.json").read_text())
    pseudo = Pseudonymizer(TEST_KEY)
    by_token = {pseudo.path_token(name): name for name in names}
    [(source_token, entries)] = v2["sources"].items()
    assert set(entries) == set(by_token), "the ledger is keyed by the files' path tokens"
    v1 = {"version": 1, "sources": {str(landing.resolve()): {by_token[t]: e for t, e in entries.items()}}}
    (home / "ledger.json").write_text(json.dumps(v1))  # the home as an older medmeta left it

    again = ingest_flow(str(landing), str(home), run_validation=False)
    assert first["files_ingested"] == 2 and first["patients"] == 6
    assert (again["files_unchanged"], again["files_ingested"], again["snapshot"]) == (2, 0, first["snapshot"])
    migrated = json.loads((home / "ledger.json").read_text())
    assert migrated["version"] == 2 and migrated["sources"].keys() == {source_token}
    assert {t: e["sha256"] for t, e in migrated["sources"][source_token].items()} == {
        t: e["sha256"] for t, e in entries.items()}
    assert leaks(NEEDLES, home=home, prefect_db=prefect_api) == {}


# -- landing folders by token ---------------------------------------------------------------------

def test_a_landing_token_resolves_in_a_process_that_knows_the_folder(tmp_path, monkeypatch):
    from medmeta.errors import MedmetaError
    from medmeta.ingest import landings
    from medmeta.pseudonyms import Pseudonymizer

    pseudo = Pseudonymizer(TEST_KEY)
    folder = tmp_path / f"{LANDING_MARK}_served"
    folder.mkdir()
    token = landings.landing_token(folder, pseudo)
    monkeypatch.delenv(landings.LANDINGS_ENV, raising=False)
    monkeypatch.setattr(landings, "_registered", [])
    with pytest.raises(MedmetaError) as unknown:
        landings.resolve_landing(token, pseudo)
    assert token in str(unknown.value) and LANDING_MARK not in str(unknown.value)
    monkeypatch.setenv(landings.LANDINGS_ENV, landings.landings_environment([tmp_path / "elsewhere", folder]))
    assert landings.resolve_landing(token, pseudo) == folder.resolve()
    with pytest.raises(MedmetaError, match="names 2 folders"):
        landings.resolve_landing(None, pseudo)
    monkeypatch.setenv(landings.LANDINGS_ENV, str(folder))
    assert landings.resolve_landing(None, pseudo) == folder.resolve()
    with pytest.raises(MedmetaError):  # another key: the token is not the folder's
        landings.resolve_landing(token, Pseudonymizer("another-key-entirely-0123456789"))
    monkeypatch.delenv(landings.LANDINGS_ENV)
    assert landings.register_landing(folder, pseudo) == token
    assert landings.resolve_landing(token, pseudo) == folder.resolve()
    assert landings.resolve_landing(str(folder), pseudo) == folder.resolve(), "a path is taken as it is"


@pytest.mark.usefixtures("pseudonym_key")
def test_a_flow_stores_the_landing_token_whatever_it_was_given(tmp_path):
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline_flow
    from flows.watch import watch_landing_flow
    from medmeta.ingest.landings import landing_token
    from medmeta.pseudonyms import Pseudonymizer

    folder = tmp_path / f"{LANDING_MARK}_export"
    folder.mkdir()
    token = landing_token(folder, Pseudonymizer(TEST_KEY))
    home = str(tmp_path / "home")
    assert ingest_flow.serialize_parameters({"source": str(folder), "home": home}) == {"source": token, "home": home}
    assert pipeline_flow.serialize_parameters({"landing": token, "home": home})["landing"] == token
    assert watch_landing_flow.with_options(name="w").serialize_parameters({"landing": folder, "home": home}) == {
        "landing": token, "home": home}


@pytest.mark.usefixtures("pseudonym_key")
def test_the_watcher_finds_its_folder_by_token(prefect_api, tmp_path, monkeypatch):
    from flows.watch import watch_landing_flow
    from medmeta.errors import MedmetaError
    from medmeta.ingest import landings
    from medmeta.pseudonyms import Pseudonymizer

    folder = tmp_path / f"{LANDING_MARK}_watched"
    folder.mkdir()
    (folder / NAMES["plain"]).write_text("{}")
    os.utime(folder / NAMES["plain"], (1, 1))  # settled long ago
    token = landings.landing_token(folder, Pseudonymizer(TEST_KEY))
    monkeypatch.setattr(landings, "_registered", [])
    monkeypatch.setenv(landings.LANDINGS_ENV, str(folder))  # what `medmeta serve` hands its flow runs
    home = str(tmp_path / "home")
    assert watch_landing_flow(token, home, run_for_s=0) == {"files": 1, "new": 1, "changed": 0, "removed": 0}
    shutil.rmtree(folder)
    with pytest.raises(MedmetaError, match=f"the landing folder {token} does not exist"):
        watch_landing_flow(token, home, run_for_s=0)
    assert leaks(NEEDLES, home=tmp_path / "home", prefect_db=prefect_api) == {}


def test_a_landing_folder_is_no_site_name_in_the_store(tmp_path):
    from medmeta.ingest.process import stored_site
    from medmeta.pseudonyms import Pseudonymizer

    pseudo = Pseudonymizer(TEST_KEY)
    operator = frozenset({"default", "site_a"})
    assert stored_site(FOLDER, FOLDER, operator, pseudo) == "folder-" + pseudo.path_token(FOLDER)[:16]
    assert stored_site("site_a", "site_a", operator, pseudo) == "site_a", "a site the operator named is kept"
    assert stored_site("site_a", FOLDER, operator, pseudo) == "site_a", "a site mapping's site is kept"
    assert stored_site("default", "default", operator, pseudo) == "default"
