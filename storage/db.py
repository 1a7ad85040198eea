"""Engines for the two supported databases: SQLite (the embedded default) and PostgreSQL.

SQLite is set up so that several writers, in one process or several, queue for the write lock instead of failing
with "database is locked": WAL (readers never block the writer), a busy timeout (a writer waits for the lock), and
write transactions that take the lock with `BEGIN IMMEDIATE` at their start. Without the last, a transaction that
reads first and writes later asks for the lock mid-way; in WAL mode SQLite refuses that at once whenever another
writer committed in between, and the busy timeout cannot help.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import ExceptionContext
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

DEFAULT_DATABASE_PATH = Path("data") / "scratchbot.db"

_READ_ONLY_OPTION = "scratchbot_read_only"

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
# What a database URL looks like, for messages about one that cannot be used.
URL_FORMS = "postgresql+asyncpg://user:password@host:5432/dbname or sqlite:///data/scratchbot.db"


class StorageError(Exception):
    """A storage problem the user can fix (a URL, a server, a schema version); its message says how."""


class DatabaseURLError(StorageError, ValueError):
    """The configured database URL cannot be used."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached, opened or written: a server down, hung or unreachable, a wrong host or name, a
    full or read-only disk, a lock held too long. The message names the cause; the operation did not happen."""


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long any one database wait may take, so a user hears back even when the database hangs."""

    # PostgreSQL: opening a connection (TCP, TLS, authentication). Also how long a request waits for a free
    # connection of the pool.
    connect_s: float = 5.0
    # PostgreSQL: one statement, enforced by the server (statement_timeout) and by the client (a server that stops
    # answering). SQLite: how long a writer waits for another's lock (the busy timeout); far longer than any write
    # transaction the bot runs (milliseconds), so it only expires when something is truly stuck.
    statement_s: float = 10.0

    def __post_init__(self) -> None:
        if self.connect_s <= 0 or self.statement_s <= 0:
            raise ValueError(f"database timeouts must be positive, got {self.connect_s} and {self.statement_s}")

    def for_maintenance(self) -> DatabaseTimeouts:
        """The waits of work no user waits for and that may rightly take long: migrations (a replica starting while
        another migrates waits for its lock), retention and purges of a large database."""
        return DatabaseTimeouts(self.connect_s, max(self.statement_s, MAINTENANCE_STATEMENT_S))


MAINTENANCE_STATEMENT_S = 600.0
# The client waits this much longer than the server's statement_timeout, so a slow statement ends with the server's
# clean cancel (the connection stays usable); only a server that stopped answering hits the client's own limit.
_CLIENT_MARGIN_S = 2.0


DEFAULT_TIMEOUTS = DatabaseTimeouts()


def sqlite_url(path: Path | str) -> str:
    """The URL of a SQLite database file; a relative path is relative to the working directory."""
    return URL.create("sqlite+aiosqlite", database=str(path)).render_as_string()


DEFAULT_DATABASE_URL = sqlite_url(DEFAULT_DATABASE_PATH)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pick the async driver we ship for it (`sqlite://` -> aiosqlite, `postgresql://` ->
    asyncpg), so users can write the plain URLs they already know."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        # Neither the URL nor SQLAlchemy's message is repeated as given: a typo must not print the password.
        raise DatabaseURLError(
            f"cannot parse the database URL {without_password(str(url))}: {_parse_problem(str(url), e)}. Write it as "
            f"{URL_FORMS} (percent-encode @, : and / in the password: %40, %3A, %2F)"
        ) from None
    if parsed.host and "@" in parsed.host:  # SQLAlchemy split "user:p@ss@host" at the first '@'
        raise DatabaseURLError(
            f"the password in the database URL {without_password(str(url))} contains '@'; percent-encode it as %40 "
            "(and : as %3A, / as %2F)"
        )
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


def without_password(url: str) -> str:
    """``url``, which could not be parsed, as it can be shown: whatever may be a password replaced by ***. That is
    everything between the user name's ':' and the last '@' (or, with no '@', a 'port' that is not a number: a
    forgotten host) and any password= parameter."""
    start = match.end() if (match := re.match(r"[A-Za-z][\w+.-]*:/+", url)) else 0  # after "scheme://"
    at = url.rfind("@")
    if at >= start:
        colon = url.find(":", start, at)
        if colon >= 0:
            url = f"{url[: colon + 1]}***{url[at:]}"
    else:
        authority = re.match(r"([^/:?]*:)([^/?]*)", url[start:])
        if authority and not authority.group(2).isdigit():
            url = url[:start] + authority.group(1) + "***" + url[start + authority.end() :]
    return re.sub(r"(password=)[^&]*", r"\1***", url)


def _parse_problem(url: str, error: Exception) -> str:
    if isinstance(error, ValueError) and not isinstance(error, ArgumentError):
        return "the port after the host's ':' must be a number (a missing '@host' looks like this too)"
    if "://" not in url:
        return "it has no '://' after the database name"
    return "the part before '://' must be a database name such as postgresql+asyncpg or sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite database URL; None for a server database."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database).expanduser()


def create_engine(
    url: str | URL,
    *,
    timeouts: DatabaseTimeouts = DEFAULT_TIMEOUTS,
    connect_args: Mapping[str, Any] | None = None,
    echo: bool = False,
) -> AsyncEngine:
    """An async engine for `url`, set up as the module docstring says, with every wait bounded by `timeouts`. For
    SQLite, the file's directory is created.

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
        _configure_sqlite(engine, busy_timeout_ms=round(timeouts.statement_s * 1000))
    else:
        args.setdefault("timeout", timeouts.connect_s)  # asyncpg: connecting, authentication included
        # asyncpg: a server that stops answering (see _CLIENT_MARGIN_S).
        args.setdefault("command_timeout", timeouts.statement_s + _CLIENT_MARGIN_S)
        statement_ms = str(round(timeouts.statement_s * 1000))  # the server's own limit: a slow query, a lock wait
        args["server_settings"] = {"statement_timeout": statement_ms, **args.get("server_settings", {})}
        try:
            # pool_pre_ping: a PostgreSQL restart must cost a reconnect, not a failed user message. pool_timeout: a
            # request waits for a free connection as long as for a connection and a statement.
            engine = create_async_engine(
                parsed, connect_args=args, echo=echo, pool_pre_ping=True,
                pool_timeout=timeouts.connect_s + timeouts.statement_s,
            )  # fmt: skip
        except ImportError:
            raise DatabaseURLError(
                "PostgreSQL needs the asyncpg driver, which is not installed: pip install 'scratchbot[postgres]'"
            ) from None
        _configure_postgresql(engine)
    log.debug("database engine for %s", describe_database(parsed))
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
    except (OSError, TimeoutError, DBAPIError) as e:
        # Any refusal at first contact counts (a wrong password or database name too), with the driver's words.
        reason = unavailable_reason(e) or str(e.orig if isinstance(e, DBAPIError) else e) or type(e).__name__
        raise DatabaseUnavailableError(
            f"cannot connect to the database {describe_database(engine.url)}: {reason}. {_check_hint(engine.url)}"
        ) from e
    try:
        yield connection
    finally:
        await connection.close()


def describe_database(url: URL) -> str:
    """How to name a database to a person: a SQLite file by its path, a server by its URL without the password."""
    if url.get_backend_name() == "sqlite" and url.database:
        return str(Path(url.database).expanduser().resolve())
    if "password" in url.query:  # asyncpg also takes the password as a parameter: ?password=...
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


def _check_hint(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return "Check that the file and its directory exist and can be read and written by this user."
    return "Check that the database server is running and answering, and that the URL is right."


@asynccontextmanager
async def unavailable_as_error() -> AsyncIterator[None]:
    """Turn the driver's many ways of saying "the database cannot be used" into one DatabaseUnavailableError, so
    callers can tell an outage (tell the user, try again later) from a bug (a constraint, a wrong query)."""
    try:
        yield
    except DatabaseUnavailableError:
        raise
    except Exception as e:
        reason = unavailable_reason(e)
        if reason is None:
            raise
        log.debug("database unavailable: %s (%s: %s)", reason, type(e).__name__, e)
        raise DatabaseUnavailableError(reason) from e


def unavailable_reason(error: BaseException) -> str | None:
    """Why the database could not be used, when ``error`` says so (down, hung, full, read-only, locked); None when
    it is not that kind of failure (a constraint, a bug of ours), which must not be reported as an outage.
    ``error`` may be SQLAlchemy's wrapper or the driver's own exception."""
    if isinstance(error, PoolTimeoutError):
        return "no database connection became free in time"
    if isinstance(error, TimeoutError):
        return "the database did not answer in time"
    if isinstance(error, OSError):
        return f"the connection to the database failed ({error.strerror or error})"
    if isinstance(error, DBAPIError):
        reason = unavailable_reason(error.orig) if error.orig is not None else None
        return reason or ("the connection to the database was lost" if error.connection_invalidated else None)
    if isinstance(error.__cause__, TimeoutError):  # asyncpg's timeout, as SQLAlchemy's adapter wraps it
        return "the database did not answer in time"
    if isinstance(error, sqlite3.Error):
        return _SQLITE_REASONS.get(_sqlite_code(error))
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    for prefix, reason in _POSTGRES_REASONS:
        if sqlstate.startswith(prefix):
            return reason
    # asyncpg's InterfaceError is also raised for our own misuse ("another operation is in progress"): only a closed
    # connection is an outage.
    if type(error).__name__ in ("InterfaceError", "ConnectionDoesNotExistError") and "closed" in str(error).lower():
        return "the connection to the database was lost"
    return None


# SQLite result codes (sqlite3.Error.sqlite_errorname, e.g. SQLITE_READONLY_DBMOVED: the part after "SQLITE_").
_SQLITE_REASONS = {
    "READONLY": "the database file is read-only",
    "FULL": "the disk holding the database is full",
    "BUSY": "another program holds the database locked",
    "LOCKED": "another program holds the database locked",
    "CANTOPEN": "the database file cannot be opened",
    "IOERR": "the disk holding the database failed to read or write",
    "PERM": "the database file is not accessible",
    "CORRUPT": "the database file is damaged",
    "NOTADB": "the database file is not a SQLite database",
}
# PostgreSQL SQLSTATE codes, most specific first.
_POSTGRES_REASONS = (
    ("57014", "the database did not answer in time (statement timeout)"),
    ("25006", "the database is read-only (a standby, or in read-only mode)"),
    ("53100", "the disk holding the database is full"),
    ("53300", "the database has no connections left"),
    ("08", "the connection to the database failed"),
    ("53", "the database is out of resources"),
    ("57", "the database is shutting down or not accepting connections"),
    ("58", "the database server failed to read or write its files"),
)
# Errors after which a pooled connection is not worth keeping: the next use opens a new one, so the service
# recovers by itself once the database is back (a file made writable again, a server restarted or reachable).
_SQLITE_REPLACE_CONNECTION = ("READONLY", "CANTOPEN", "IOERR", "NOTADB", "CORRUPT")


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A statement the client gave up on (the server hung) leaves the connection mid-protocol, and a server that
        # became a read-only standby (a failover) keeps answering pings: never reuse such a connection. Without this a
        # rollback would wait on it once more, and the pool would hand it out again. A statement the server itself
        # cancelled (statement_timeout) leaves the connection usable.
        error = context.sqlalchemy_exception or context.original_exception
        sqlstate = str(getattr(context.original_exception, "sqlstate", None) or "")
        if unavailable_reason(error) is not None and sqlstate != "57014":
            context.is_disconnect = True


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    # SQLAlchemy's documented recipe ("Serializable isolation / Savepoints / Transactional DDL", aiosqlite variant):
    # take transaction control away from the sqlite3 module, which would otherwise BEGIN late (only before DML) and
    # leave DDL and SAVEPOINTs outside the transaction, and emit BEGIN ourselves.

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
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

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A connection opened while the file was read-only stays read-only, even after the file is fixed.
        if _sqlite_code(context.original_exception) in _SQLITE_REPLACE_CONNECTION:
            context.is_disconnect = True


def _sqlite_code(error: BaseException) -> str:
    """READONLY for SQLITE_READONLY_DBMOVED, FULL for SQLITE_FULL; "" for anything that is not a SQLite error."""
    name = getattr(error, "sqlite_errorname", "")
    return name.removeprefix("SQLITE_").split("_")[0] if isinstance(error, sqlite3.Error) else ""
