"""Engines for the two supported databases: SQLite (the embedded default) and PostgreSQL.

SQLite is set up so that several writers, in one process or several, queue for the write lock instead of failing
with "database is locked": WAL (readers never block the writer), a busy timeout (a writer waits for the lock), and
write transactions that take the lock with `BEGIN IMMEDIATE` at their start. Without the last, a transaction that
reads first and writes later asks for the lock mid-way; in WAL mode SQLite refuses that at once whenever another
writer committed in between, and the busy timeout cannot help.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

DEFAULT_DATABASE_PATH = Path("data") / "scratchbot.db"

# Longer than any write transaction the bot runs (milliseconds), so a queued writer only fails when something is
# truly stuck, e.g. another program holding the file open in a transaction.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_READ_ONLY_OPTION = "scratchbot_read_only"

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


class StorageError(Exception):
    """A storage problem the user can fix (a URL, a server, a schema version); its message says how."""


class DatabaseURLError(StorageError, ValueError):
    """The configured database URL cannot be used."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached or opened: a server down, a wrong host or name, a file that cannot be created."""


def sqlite_url(path: Path | str) -> str:
    """The URL of a SQLite database file; a relative path is relative to the working directory."""
    return URL.create("sqlite+aiosqlite", database=str(path)).render_as_string()


DEFAULT_DATABASE_URL = sqlite_url(DEFAULT_DATABASE_PATH)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pick the async driver we ship for it (`sqlite://` -> aiosqlite, `postgresql://` ->
    asyncpg), so users can write the plain URLs they already know."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise DatabaseURLError(
            f"cannot parse the database URL {url!r}: {e}. Use e.g. sqlite:///data/scratchbot.db "
            "or postgresql+asyncpg://user@host:5432/dbname"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    wanted = _DRIVERS.get(backend)
    if wanted is None:
        raise DatabaseURLError(
            f"database {parsed.drivername!r} is not supported; use SQLite (sqlite:///path/to/file.db) "
            "or PostgreSQL (postgresql+asyncpg://user@host/dbname)"
        )
    if driver and driver != wanted.partition("+")[2]:
        raise DatabaseURLError(
            f"database driver {driver!r} is not supported; scratchbot talks to the database through "
            f"{wanted.partition('+')[2]}: write the URL as {wanted}://..."
        )
    parsed = parsed.set(drivername=wanted)
    if wanted.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise DatabaseURLError(
            "an in-memory SQLite database would lose everything at exit and cannot be shared between connections; "
            "give a file, e.g. sqlite:///data/scratchbot.db"
        )
    return parsed


def create_engine(url: str | URL, *, connect_args: Mapping[str, Any] | None = None, echo: bool = False) -> AsyncEngine:
    """An async engine for `url`, set up as the module docstring says. For SQLite, the file's directory is created.

    `connect_args` go to the driver, e.g. `{"server_settings": {"search_path": "bot"}}` to keep the bot's tables in
    their own PostgreSQL schema.
    """
    parsed = normalize_url(url)
    args = dict(connect_args or {})
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None  # normalize_url refuses the rest
        directory = Path(parsed.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnavailableError(
                f"cannot create the directory {directory} for the SQLite database: {e.strerror}. "
                "Create it, or give a database path that can be written."
            ) from e
        engine = create_async_engine(parsed, connect_args=args, echo=echo)
        _configure_sqlite(engine)
    else:
        try:
            # pool_pre_ping: a PostgreSQL restart must cost a reconnect, not a failed user message.
            engine = create_async_engine(parsed, connect_args=args, echo=echo, pool_pre_ping=True)
        except ImportError:
            raise DatabaseURLError(
                "PostgreSQL needs the asyncpg driver, which is not installed: pip install 'scratchbot[postgres]'"
            ) from None
    log.debug("database engine for %s", parsed.render_as_string(hide_password=True))
    return engine


def single_statement_reads(engine: AsyncEngine) -> AsyncEngine:
    """`engine` (same pool) for sessions that only read, one statement each, outside any explicit transaction.

    Each statement is then its own snapshot, which is all a single statement needs, and the history read saves the
    BEGIN and ROLLBACK round trips (two to PostgreSQL; on SQLite, four to aiosqlite's thread). On SQLite such a read
    also takes no lock up front, so it never waits for the writer. Writing through this engine is a bug.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_READ_ONLY_OPTION: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@asynccontextmanager
async def connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection from `engine`; failing to get one raises DatabaseUnavailableError with the reason and a hint.

    Use it for the first contact at start-up, so a wrong URL or a stopped server reads as one clear line rather than
    a driver traceback.
    """
    connection = engine.connect()
    try:
        await connection.start()
    except (OSError, DBAPIError) as e:
        reason = e.orig if isinstance(e, DBAPIError) else e
        raise DatabaseUnavailableError(
            f"cannot connect to the database {engine.url.render_as_string(hide_password=True)}: {reason}. "
            "Check that the database server is running and that the URL is right."
        ) from e
    try:
        yield connection
    finally:
        await connection.close()


def _configure_sqlite(engine: AsyncEngine) -> None:
    # SQLAlchemy's documented recipe ("Serializable isolation / Savepoints / Transactional DDL", aiosqlite variant):
    # take transaction control away from the sqlite3 module, which would otherwise BEGIN late (only before DML) and
    # leave DDL and SAVEPOINTs outside the transaction, and emit BEGIN ourselves.

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # SQLite leaves foreign keys off by default, per connection; ON DELETE CASCADE depends on them.
            cursor.execute("PRAGMA foreign_keys=ON")
            # In WAL mode NORMAL cannot corrupt the database; it can lose the last commits on power loss (not on a
            # crash of the process) and saves an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # SQLAlchemy's own AUTOCOMMIT level does not mix with this recipe; reads skip the BEGIN instead.
        if not conn.get_execution_options().get(_READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
