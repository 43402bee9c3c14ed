"""``medmeta server --database URL``: the operate tests' server really is on PostgreSQL, and a
PostgreSQL URL that does not answer is one line, exit 2, without the password and before the home exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests import postgres_cluster
from tests.prefect_server import free_port

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Pw-0f-the-test-9c41"  # what no output may show
CHECK_LIMIT_S = 30  # the bound on a database that does not answer (a subprocess timeout, not a measurement)


def _probe():
    from prefect import flow

    @flow(name="medmeta-postgres-probe", persist_result=False)
    def probe() -> int:
        return 1

    return probe


def test_the_operate_server_keeps_its_flow_runs_in_postgresql(operate_server):
    if operate_server.database is None:
        pytest.skip("the operate server runs on SQLite here: see the warning of the operate_server fixture")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: operate_server.url}):
        state = _probe()(return_state=True)
    assert state.is_completed(), state
    run_id = state.state_details.flow_run_id

    rows = postgres_cluster.query(
        operate_server.database,
        "SELECT f.name, r.state_type::text AS state FROM flow_run r JOIN flow f ON f.id = r.flow_id WHERE r.id = $1",
        run_id)
    assert rows == [{"name": "medmeta-postgres-probe", "state": "COMPLETED"}]
    assert not list(operate_server.home.rglob("*.db")), "a SQLite database was created beside PostgreSQL"
    log = operate_server.log.read_text(errors="replace")
    password = make_url(operate_server.database).password
    assert password not in log
    assert "postgresql+asyncpg://postgres:***@127.0.0.1:" in log.splitlines()[0]


def _server(database: str, home: Path, *, variable: str | None = None) -> subprocess.CompletedProcess:
    """``medmeta server`` given ``database`` with ``--database``, or in the environment variable named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MEDMETA_DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    args = ["server", "--home", str(home), "--port", str(free_port())]
    if variable:
        env[variable] = database
    else:
        args += ["--database", database]
    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=CHECK_LIMIT_S)


def _assert_one_line_refusal(result: subprocess.CompletedProcess, home: Path, *names: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "Traceback" not in output
    assert PASSWORD not in output
    for name in names:
        assert name in line, line
    assert not home.exists(), "the home was created for a server that never started"
    return line


@pytest.mark.parametrize("variable", [None, "MEDMETA_DATABASE_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"],
                         ids=["option", "medmeta-variable", "prefect-variable"])
def test_a_closed_port_is_one_line_naming_it(tmp_path, variable):
    port = free_port()  # bound a moment ago and closed again: nothing listens there
    result = _server(f"postgresql+asyncpg://medmeta:{PASSWORD}@127.0.0.1:{port}/prefect", tmp_path / "home",
                     variable=variable)
    line = _assert_one_line_refusal(result, tmp_path / "home", f"127.0.0.1:{port}/prefect")
    assert "connection refused" in line


def test_a_wrong_password_is_one_line_without_it(postgres_server, tmp_path):
    if postgres_server.url is None:
        pytest.skip(f"no PostgreSQL: {postgres_server.reason}")
    real = make_url(postgres_server.url)
    wrong = real.set(password=PASSWORD).render_as_string(hide_password=False)
    result = _server(wrong, tmp_path / "home")
    line = _assert_one_line_refusal(result, tmp_path / "home", f"{real.host}:{real.port}/{real.database}")
    assert "password authentication failed" in line
    assert real.password not in line


def test_a_missing_database_is_one_line_naming_it(postgres_server, tmp_path):
    if postgres_server.url is None:
        pytest.skip(f"no PostgreSQL: {postgres_server.reason}")
    real = make_url(postgres_server.url)
    missing = real.set(database="medmeta_no_such_database").render_as_string(hide_password=False)
    result = _server(missing, tmp_path / "home")
    line = _assert_one_line_refusal(result, tmp_path / "home", f"{real.host}:{real.port}/medmeta_no_such_database")
    assert "no such database" in line
    assert real.password not in result.stderr


@pytest.mark.parametrize("url", [f"mysql://medmeta:{PASSWORD}@db.example:3306/prefect",
                                 f"sqlite+aiosqlite:///{PASSWORD}/prefect.db",
                                 f"medmeta:{PASSWORD}@not a url"], ids=["mysql", "sqlite", "not-a-url"])
def test_a_url_that_is_not_postgresql_is_one_line(tmp_path, url):
    result = _server(url, tmp_path / "home")
    line = _assert_one_line_refusal(result, tmp_path / "home")
    assert "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE" in line


def test_a_user_who_may_not_create_prefects_tables_is_one_line(postgres_server, tmp_path):
    """PostgreSQL 15 lets only a database's owner create tables in its public schema: an empty database
    owned by someone else is refused before the server's migrations would fail in its log."""
    if postgres_server.url is None:
        pytest.skip(f"no PostgreSQL: {postgres_server.reason}")
    import secrets

    role = f"medmeta_guest_{secrets.token_hex(3)}"
    postgres_cluster.query(postgres_server.url, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    try:
        with postgres_cluster.fresh_database(postgres_server.url, "not_owned") as database:
            url = make_url(database)
            as_guest = url.set(username=role, password=PASSWORD).render_as_string(hide_password=False)
            result = _server(as_guest, tmp_path / "home")
    finally:
        postgres_cluster.query(postgres_server.url, f"DROP ROLE IF EXISTS {role}")
    line = _assert_one_line_refusal(result, tmp_path / "home", f"{url.host}:{url.port}/{url.database}")
    assert "can not take Prefect's tables: the user may not create them in schema public" in line
