"""A PostgreSQL server for the tests, and a fresh database in it per use.

Where the server comes from, in order:

1. ``$MEDMETA_TEST_POSTGRES_URL`` (``.ci/run`` exports it): a ``postgresql+asyncpg://`` URL whose user
   may create databases;
2. a throwaway cluster this process starts with ``.ci/postgres.sh`` (initdb + pg_ctl on 127.0.0.1 at a
   free port, in a temporary folder, owned by the ``postgres`` user when we are root) and stops after;
3. none: ``why_no_cluster()`` says why (no PostgreSQL binaries; root without a ``postgres`` user).

Every user gets its own database (``fresh_database``): pytest-xdist workers never share one.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "postgres.sh"
TEST_URL_ENV = "MEDMETA_TEST_POSTGRES_URL"
REQUIRE_ENV = "MEDMETA_REQUIRE_POSTGRES"  # "1" (CI): no PostgreSQL is a failure, never a fall-back to SQLite


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def why_no_cluster() -> str | None:
    """Why this machine can not start a throwaway cluster, or None when it can."""
    on_path = shutil.which("initdb")
    debian = [d for d in glob.glob("/usr/lib/postgresql/*/bin/initdb") if os.access(d, os.X_OK)]
    if not on_path and not debian:
        return "no PostgreSQL binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to own a cluster (initdb refuses root)"
    return None


def start_cluster() -> tuple[Path, str]:
    """Start a cluster with ``.ci/postgres.sh start``: its folder and URL (database ``medmeta``, superuser
    ``postgres``). The folder is under the system's temporary folder, which the ``postgres`` user can
    reach (pytest's tmp_path, mode 0700 under root, it can not). RuntimeError when it does not start."""
    folder = Path(tempfile.mkdtemp(prefix="medmeta-test-pg-"))
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        stop_cluster(folder)
        raise RuntimeError(f"{SCRIPT.name} start failed ({started.returncode}): {started.stderr[-2000:]}")
    return folder, started.stdout.strip().splitlines()[-1]


def stop_cluster(folder: Path) -> None:
    """Stop the cluster in ``folder`` and remove the folder."""
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A cluster for the length of the block: its URL."""
    folder, url = start_cluster()
    try:
        yield url
    finally:
        stop_cluster(folder)


def _dsn(url: str) -> str:
    """asyncpg's spelling of a SQLAlchemy PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


def query(url: str, sql: str, *args) -> list[dict]:
    """Run one statement on the database at ``url``; its rows as dicts."""
    import asyncpg

    async def run():
        connection = await asyncpg.connect(dsn=_dsn(url), timeout=10)
        try:
            return [dict(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(run())


@contextmanager
def fresh_database(server_url: str, label: str) -> Iterator[str]:
    """Create an empty database ``medmeta_<label>_<random>`` on the server of ``server_url`` (its user
    needs CREATEDB); yield its URL; drop it after (``WITH (FORCE)``: connections left open are closed)."""
    name = f"medmeta_{''.join(c if c.isalnum() else '_' for c in label.lower())}_{secrets.token_hex(4)}"
    query(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        query(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
