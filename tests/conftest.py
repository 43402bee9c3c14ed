"""Shared fixtures: one real Prefect API per test session, a pseudonym key, real DICOM."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: its home and database stay out of the user's ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="medmeta-test-prefect-"))
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


# The operate tests' session fixtures (a real server, `medmeta serve`, one triggered pipeline run).
from tests.operate_fixtures import cohort, operate_server, served, triggered_run  # noqa: E402,F401
