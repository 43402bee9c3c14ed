"""Ingest on a real Dask cluster (fixture ``dask_cluster``: a scheduler and two single-threaded
workers on 127.0.0.1): the same store as the local pool, byte for byte; an unreachable scheduler, a
worker that cannot see the home and a worker killed mid-ingest each end cleanly, and a rerun
finishes the job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medmeta.home import Home
from medmeta.ingest.images_table import read_images
from tests.conftest import TEST_KEY, pydicom_test_files
from tests.phi_search import leaks
from tests.test_ingest_flow import tree_files

ROOT = Path(__file__).resolve().parents[1]
SMALL_BATCHES = "batch_size: 16\n"  # several staging batches, so several Dask tasks of several batches
REAL_DICOM = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb.dcm", "US1_J2KR.dcm")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pseudonym_key")]


def _store(home: Path) -> dict[str, bytes]:
    """What must be byte-identical: the canonical tables, the pixel cache, the staged image batches."""
    files = {f"store/{k}": v for k, v in tree_files(home / "store").items()
             if not k.startswith("parts/") or k.startswith("parts/images-")}
    files.update({f"cache/pixels/{k}": v for k, v in tree_files(home / "cache" / "pixels").items()})
    return files


def _pixels(home: Path) -> dict[str, np.ndarray]:
    """Each image's pixels read back through the images table (image_id -> array)."""
    images = read_images(Home(home)).to_pylist()
    caches = {path: np.load(home / path, mmap_mode="r") for path in {row["pixel_path"] for row in images}}
    return {row["image_id"]: np.asarray(caches[row["pixel_path"]][row["pixel_index"]]) for row in images}


def _snapshot(home: Path) -> str:
    import json

    return json.loads((home / "store" / "manifest.json").read_text())["snapshot"]


@pytest.fixture(scope="module")
def mixed_landing(tmp_path_factory) -> Path:
    """A synthetic cohort (records and DICOM), a few of pydicom's real files, one bad file."""
    from medmeta.synth.generate import generate_cohort

    landing = tmp_path_factory.mktemp("dask-landing") / "landing"
    generate_cohort(landing, patients=30, seed=11, faults=False)
    real = landing / "real_dicom"
    real.mkdir()
    for path in pydicom_test_files():
        if path.name in REAL_DICOM:
            shutil.copyfile(path, real / path.name)
    (landing / "broken.dcm").write_bytes(b"this is not a DICOM file\x00\x01" * 10)
    return landing


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("dask-config") / "ingest.yaml"
    config.write_text(SMALL_BATCHES)
    return config


@pytest.fixture(scope="module")
def local_home(mixed_landing, settings, tmp_path_factory, prefect_api) -> Path:
    """The reference: the same folder through the local process pool (2 processes)."""
    from flows.ingest import ingest_flow

    home = tmp_path_factory.mktemp("dask-local") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        ingest_flow(str(mixed_landing), str(home), str(settings), workers=2, run_validation=False)
    return home


def _assert_same_store(home: Path, reference: Path) -> None:
    assert _snapshot(home) == _snapshot(reference)
    ours, theirs = _store(home), _store(reference)
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []
    ours, theirs = _pixels(home), _pixels(reference)
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_dask_ingest_equals_the_local_pool_byte_for_byte(dask_cluster, mixed_landing, settings, local_home, tmp_path,
                                                          prefect_api, caplog):
    from flows.ingest import ingest_flow

    home = tmp_path / "home"
    summary = ingest_flow(str(mixed_landing), str(home), str(settings), run_validation=False,
                          dask_address=dask_cluster.address)
    assert summary["files_quarantined"] == 1 and summary["images"] > len(REAL_DICOM)
    _assert_same_store(home, local_home)
    # the key and the landing folder's path reach neither Prefect nor the workers' logs
    found = leaks([TEST_KEY, str(mixed_landing)], home=home, prefect_db=prefect_api,
                  texts={"worker logs": dask_cluster.logs(), "caplog": caplog.text})
    assert found == {}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_naming_it_and_the_home_is_untouched(mixed_landing, settings, local_home,
                                                                                   tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    home = shutil.copytree(local_home, tmp_path / "home")
    before = tree_files(home)
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", "ingest", str(mixed_landing), "--home", str(home),
                             "--config", str(settings), "--dask", address],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "does not answer" in lines[0], result.stderr[-2000:]
    assert tree_files(home) == before

    from flows.ingest import ingest_flow
    from medmeta.ingest.dask_engine import DaskClusterError

    with pytest.raises(DaskClusterError, match="does not answer") as refused:  # the flow's own check
        ingest_flow(str(mixed_landing), str(home), str(settings), run_validation=False, dask_address=address)
    assert address in str(refused.value)
    assert tree_files(home) == before


@pytest.fixture
def blind_worker(dask_cluster, tmp_path):
    """A third worker in its own mount namespace, with an empty tmpfs over this test's folder: it
    cannot see the home (nor the landing) that the flow writes there."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("unshare --mount is not available here (it needs root or user namespaces)")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount -t tmpfs tmpfs "{tmp_path}" && exec "$@"', "blind"]
    process = dask_cluster.start_worker("worker-blind", prefix=prefix, nanny=False)
    dask_cluster.wait_for_workers({"worker-1", "worker-2", "worker-blind"})
    yield
    dask_cluster.stop(process)
    dask_cluster.wait_for_workers({"worker-1", "worker-2"})


@pytest.mark.usefixtures("blind_worker")
def test_a_worker_that_cannot_see_the_home_is_refused_by_name(dask_cluster, mixed_landing, settings, tmp_path):
    from flows.ingest import ingest_flow
    from medmeta.ingest.dask_engine import DaskClusterError

    landing = shutil.copytree(mixed_landing, tmp_path / "landing")
    home = tmp_path / "home"
    with dask_cluster.client() as client:
        blind = next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == "worker-blind")
    with pytest.raises(DaskClusterError) as refused:
        ingest_flow(str(landing), str(home), str(settings), run_validation=False, dask_address=dask_cluster.address)
    message = str(refused.value)
    assert blind in message and str(home) in message and "cannot see the home" in message
    assert str(landing) not in message
    assert not (home / "store" / "manifest.json").exists() and not list((home / "store" / "parts").iterdir())


def test_a_worker_without_a_prefect_api_url_is_refused_by_name(dask_cluster, mixed_landing, settings, tmp_path):
    from flows.ingest import ingest_flow
    from medmeta.ingest.dask_engine import DaskClusterError

    process = dask_cluster.start_worker("worker-no-api", nanny=False, PREFECT_API_URL="")
    try:
        dask_cluster.wait_for_workers({"worker-1", "worker-2", "worker-no-api"})
        with pytest.raises(DaskClusterError, match="has no PREFECT_API_URL"):
            ingest_flow(str(mixed_landing), str(tmp_path / "home"), str(settings), run_validation=False,
                        dask_address=dask_cluster.address)
        assert not (tmp_path / "home" / "store" / "manifest.json").exists()
    finally:
        dask_cluster.stop(process)
        dask_cluster.wait_for_workers({"worker-1", "worker-2"})


def _set_delay(seconds: str) -> None:
    from medmeta.ingest.dask_engine import TEST_DELAY_ENV

    if seconds:
        os.environ[TEST_DELAY_ENV] = seconds
    else:
        os.environ.pop(TEST_DELAY_ENV, None)


def test_a_worker_killed_mid_ingest_then_a_rerun_gives_the_same_store(dask_cluster, mixed_landing, settings,
                                                                     local_home, tmp_path):
    from flows.ingest import ingest_flow

    home = tmp_path / "home"
    outcome: dict = {}

    def ingest() -> None:
        try:
            outcome["summary"] = ingest_flow(str(mixed_landing), str(home), str(settings), run_validation=False,
                                             dask_address=dask_cluster.address)
        except BaseException as error:  # noqa: BLE001  (reported below)
            outcome["error"] = error

    with dask_cluster.client() as client:
        client.run(_set_delay, "120")  # every batch waits until the test clears it
        try:
            run = threading.Thread(target=ingest)
            run.start()
            deadline = time.monotonic() + 120
            while not (busy := [w for w, keys in client.processing().items() if keys]):
                assert time.monotonic() < deadline and run.is_alive(), outcome
                time.sleep(0.1)
            time.sleep(0.5)  # the task is inside its batch (waiting), not merely assigned
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
        finally:
            client.run(_set_delay, "", on_error="ignore")  # the survivor goes on; the nanny restarts the killed one without the delay
        run.join(timeout=300)
    assert not run.is_alive()
    if "error" in outcome:  # the run failed cleanly: nothing was recorded
        assert not (home / "store" / "manifest.json").exists() and not (home / "ledger.json").exists()
    else:  # Dask ran the lost task again on a live worker
        _assert_same_store(home, local_home)
    from flows.ingest import ingest_flow as rerun

    rerun(str(mixed_landing), str(home), str(settings), run_validation=False, dask_address=dask_cluster.address)
    _assert_same_store(home, local_home)
    dask_cluster.wait_for_workers({"worker-1", "worker-2"})


def test_task_groups_keep_the_staging_cut_and_give_every_worker_a_task():
    from hypothesis import given, settings as hypothesis_settings, strategies as st

    from medmeta.ingest.batches import estimated_seconds, staging_batches, task_groups
    from medmeta.landing.walk import InputItem

    @hypothesis_settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(0, 50_000_000), max_size=120), st.integers(1, 40), st.integers(1, 30),
           st.integers(1, 8))
    def check(sizes, batch_size, task_seconds, workers):
        items = [InputItem(f"f{i:04d}", Path(f"/l/f{i:04d}"), None, size) for i, size in enumerate(sizes)]
        batches = staging_batches(items, batch_size)
        groups = task_groups(batches, task_seconds, workers)
        assert [batch for group in groups for batch in group] == batches  # whole batches, in order
        assert all(groups) and len(groups) >= min(len(batches), workers)
        assert len(groups) <= max(min(len(batches), workers), int(sum(map(estimated_seconds, batches)) // task_seconds))
        assert groups == task_groups(batches, task_seconds, workers)

    check()
