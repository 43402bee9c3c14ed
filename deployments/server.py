"""``medmeta server``: a Prefect server bound to 127.0.0.1; its database SQLite in the home, or PostgreSQL.

Without a database URL the server keeps SQLite under ``H/prefect`` (one machine, one server). With
``--database URL`` (or ``$MEDMETA_DATABASE_URL``) it runs on PostgreSQL through asyncpg: the URL is
checked here first (a connection within ``CONNECT_TIMEOUT_S``), so a database that does not answer is
one line naming ``host:port/database`` and the reason, before anything is written to the home.
A URL is never shown with its password: ``masked(url)`` is what every message prints.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medmeta.errors import MedmetaError

DATABASE_ENV = "MEDMETA_DATABASE_URL"  # the database URL when --database is not given
CONNECT_TIMEOUT_S = 5.0  # one connection attempt; a name lookup, a TCP connect and the login all fit in it
POSTGRES_DRIVER = "postgresql+asyncpg"  # Prefect's server needs an async driver
_POSTGRES_SCHEMES = {"postgresql", "postgres", POSTGRES_DRIVER}
# Prefect's own ways to name its database (the URL, or its parts): replaced by --database, so one is in force.
_PREFECT_DATABASE_URLS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
_PREFECT_DATABASE_SETTINGS = _PREFECT_DATABASE_URLS + tuple(
    f"PREFECT_{group}_DATABASE_{part}" for group in ("SERVER", "API")
    for part in ("DRIVER", "HOST", "PORT", "USER", "NAME", "PASSWORD"))


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database the Prefect server will use: where it is and how to log in."""

    url: str = field(repr=False)  # postgresql+asyncpg://user:password@host:port/database[?...], as Prefect takes it
    host: str
    port: int
    database: str
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """``host:port/database``: what a message names (never the user's password)."""
        return f"{self.host}:{self.port}/{self.database}"

    @property
    def shown(self) -> str:
        return masked(self.url)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (a string that is not a URL is not shown at all)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<a database URL that can not be parsed>"


def parse_database_url(url: str) -> PostgresDatabase:
    """The PostgreSQL database ``url`` names; ``postgresql://`` and ``postgres://`` mean asyncpg.

    Raises MedmetaError (the URL shown masked) for anything that is not a PostgreSQL URL with a database.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        raise MedmetaError("the database URL can not be parsed: give "
                           "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE "
                           "(special characters in the password percent-encoded)") from None
    host, port, database = parsed.host or "localhost", parsed.port or 5432, parsed.database or ""
    if parsed.drivername not in _POSTGRES_SCHEMES:
        where = f" at {parsed.host}:{parsed.port or ''}/{database}" if parsed.host else ""
        raise MedmetaError(f"the database URL{where} is a {parsed.drivername.split('+')[0]} URL, not PostgreSQL: "
                           f"give postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE")
    if not parsed.database:
        raise MedmetaError(f"the PostgreSQL URL {masked(url)} names no database: add /DATABASE")
    prefect_url = parsed.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)
    return PostgresDatabase(url=prefect_url, host=host, port=port, database=database, password=parsed.password)


def check_database(db: PostgresDatabase, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Log in to ``db`` once (asyncpg); on a database Prefect has not migrated yet, ask whether the user may
    create its tables and the pg_trgm extension its first migration creates.

    Raises MedmetaError naming ``host:port/database`` and why it does not answer; returns within about
    ``timeout_s`` seconds.
    """
    reason = asyncio.run(_connect_reason(db, timeout_s))
    if reason:
        raise MedmetaError(f"the PostgreSQL database {db.where} {reason}")


async def _connect_reason(db: PostgresDatabase, timeout_s: float) -> str | None:
    import asyncpg

    dsn = db.url.replace(POSTGRES_DRIVER + "://", "postgresql://", 1)
    try:
        connection = await asyncio.wait_for(asyncpg.connect(dsn=dsn, timeout=timeout_s), timeout_s + 1)
    except (asyncio.TimeoutError, TimeoutError):
        return f"does not answer: nothing within {timeout_s:.0f} s (a firewall, or no PostgreSQL at that port)"
    except ConnectionRefusedError:
        return "does not answer: connection refused (no server listens on that port)"
    except socket.gaierror:
        return "does not answer: the host name is not known"
    except asyncpg.InvalidPasswordError:
        return "does not answer: password authentication failed (wrong user or password)"
    except asyncpg.InvalidCatalogNameError:
        return "does not answer: no such database (create it: createdb, or CREATE DATABASE)"
    except asyncpg.InvalidAuthorizationSpecificationError:
        return "does not answer: the server refuses this user (no such role, or pg_hba.conf does not let it in)"
    except asyncpg.PostgresError as error:  # its text can name the user or database, never the password
        return f"does not answer: the server refused the login ({type(error).__name__}, SQLSTATE {error.sqlstate})"
    except (OSError, asyncpg.InterfaceError, ValueError) as error:  # e.g. "... rejected SSL upgrade": not PostgreSQL
        text = " ".join(str(error).split()) or type(error).__name__
        if db.password:  # the driver's texts name host and user; never let one carry the password
            text = text.replace(db.password, "***")
        return f"does not answer: {text}"
    try:
        return _schema_reason(await connection.fetchrow(_PRIVILEGES_SQL, timeout=timeout_s))
    finally:
        await connection.close(timeout=timeout_s)


# What Prefect's first migration needs of an empty database: a schema it may create tables in, and pg_trgm
# (installed, or a trusted extension the user may create: CREATE on the database). A database Prefect
# already migrated (alembic_version exists) needs only what its tables need.
_PRIVILEGES_SQL = """
SELECT current_schema() AS schema,
       to_regclass('alembic_version') IS NOT NULL AS migrated,
       current_schema() IS NOT NULL AND has_schema_privilege(current_schema(), 'CREATE') AS can_create_tables,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') AS has_trgm,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') AS trgm_available,
       has_database_privilege(current_database(), 'CREATE') AS can_create_extension
"""


def _schema_reason(row) -> str | None:
    if row["migrated"]:
        return None
    if not row["can_create_tables"]:
        schema = row["schema"] or "the search_path (none of its schemas exists)"
        return (f"can not take Prefect's tables: the user may not create them in schema {schema} "
                f"(PostgreSQL 15 gives CREATE on public to the database's owner alone: make the user the owner, "
                f"or GRANT CREATE ON SCHEMA)")
    if not row["has_trgm"] and not row["trgm_available"]:
        return ("can not take Prefect's tables: the pg_trgm extension they need is not installed on the server "
                "(Debian: postgresql-contrib)")
    if not row["has_trgm"] and not row["can_create_extension"]:
        return ("can not take Prefect's tables: the user may not create the pg_trgm extension they need "
                "(CREATE EXTENSION pg_trgm in it as its owner, or GRANT CREATE ON DATABASE)")
    return None


def server_environment(home: Path, port: int, database: PostgresDatabase | None = None) -> dict[str, str]:
    """The environment of ``prefect server start`` for ``medmeta server``: its home, the UI's API URL,
    leases on disk, and the PostgreSQL database when one is given (else Prefect's SQLite in PREFECT_HOME)."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The API URL the UI's browser calls: this server, unless an operator names the proxy in front of it.
    env.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{port}/api")
    # Training-slot leases on disk (they outlive a restart) and looked at every 10 s: the slot of a
    # killed run is back within its lease (60 s) and 10 s (tasks/concurrency.py). On PostgreSQL too:
    # Prefect keeps leases outside its database (in memory, on disk, or in Redis with prefect-redis).
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
    env.setdefault("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "10")
    env.pop("PREFECT_API_URL", None)  # the server is the API; it must not point at another one
    if database is not None:
        for name in _PREFECT_DATABASE_SETTINGS:
            env.pop(name, None)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database.url
    return env


def database_from(option: str | None) -> PostgresDatabase | None:
    """The database ``--database`` names, else ``$MEDMETA_DATABASE_URL``, else a PostgreSQL URL in Prefect's
    own ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (or its older name), else None: SQLite in the home."""
    url = option if option is not None else os.environ.get(DATABASE_ENV)
    if url is not None and url.strip():
        return parse_database_url(url)
    for name in _PREFECT_DATABASE_URLS:
        prefect_url = os.environ.get(name, "").strip()
        if prefect_url.split(":", 1)[0] in _POSTGRES_SCHEMES:
            return parse_database_url(prefect_url)
    return None


def run_server(home: Path, port: int, database: PostgresDatabase | None = None) -> None:
    """Replace this process with ``prefect server start --host 127.0.0.1 --port PORT``.

    With ``database`` the server runs on it (checked by the caller with ``check_database``); Prefect
    applies its migrations at start (``PREFECT_SERVER_DATABASE_MIGRATE_ON_START``, default true).
    """
    env = server_environment(home, port, database)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    argv = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    os.execve(argv[0], argv, env)
