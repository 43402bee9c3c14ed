"""Shared fixtures: one real Prefect API per test session, a pseudonym key, real DICOM."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: its home and database stay out of the user's ~/.prefect.
# Under pytest-xdist every worker gets its own (the workers inherit the controller's environment).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER or "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"medmeta-test-prefect-{_XDIST_WORKER or 'main'}-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

TEST_KEY = "medmeta-test-pseudonym-key-0123456789"


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (subprocess server on a temp SQLite database), started once.

    Yields the path of its database so tests can search it.
    """
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        yield Path(url.split("///", 1)[1])


@pytest.fixture
def pseudonym_key(monkeypatch):
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    return TEST_KEY


def pydicom_test_files() -> list[Path]:
    """Every file of pydicom's own test data and of pydicom-data, found without the network."""
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and not p.name.endswith((".py", ".pyc")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ingested_home(base: Path, patients: int, seed: int) -> Path:
    """A synthetic cohort (no faults) ingested and validated through the real flows; its home."""
    from flows.ingest import ingest_flow
    from medmeta.synth.generate import generate_cohort

    generate_cohort(base / "landing", patients=patients, seed=seed, faults=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        summary = ingest_flow(str(base / "landing"), str(base / "home"))
    assert summary["validation"]["success"], summary["validation"]
    return base / "home"


@pytest.fixture(scope="session")
def cohort150(tmp_path_factory, prefect_api) -> Path:
    """A validated 150-patient home shared by the session: copy it (``copy_home``) before writing."""
    return ingested_home(tmp_path_factory.mktemp("cohort150"), patients=150, seed=5)


def copy_home(template: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(template, target, ignore=shutil.ignore_patterns("prefect"))
    return target


# The operate tests' session fixtures (a real server, `medmeta serve`, one triggered pipeline run).
from tests.operate_fixtures import cohort, operate_server, postgres_server, served, triggered_run  # noqa: E402,F401
# The Dask ingest tests' session cluster (a scheduler and two single-threaded workers on 127.0.0.1).
from tests.dask_cluster import dask_cluster  # noqa: E402,F401
