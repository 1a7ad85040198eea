"""Schema migrations: bring a database to the schema this version of scratchbot expects, or refuse it.

`upgrade_database` runs at every start-up and behind `scratchbot db upgrade`:
  - an empty database is migrated to head;
  - a database at an older revision this code knows is upgraded;
  - a database at a revision this code does not know (written by a newer scratchbot) is refused with
    `SchemaTooNewError`, before anything is touched: running old code on a newer schema corrupts data quietly.

The Alembic configuration is built here in code and points at the migrations inside this package, so it works from
an installed package with no alembic.ini. To write a new revision after changing `storage.models`, from a checkout,
against a database at head:

    from alembic import command
    from storage.migrate import alembic_config
    command.revision(alembic_config("sqlite:///data/dev.db"), message="add x", autogenerate=True)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import (
    DEFAULT_TIMEOUTS,
    DatabaseTimeouts,
    DatabaseUnavailableError,
    StorageError,
    connect,
    create_engine,
    describe_database,
    unavailable_as_error,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any fixed number: PostgreSQL advisory locks are keyed by a 64-bit integer, and two bot processes starting at once
# must not both try to create the same tables.
_PG_MIGRATION_LOCK = 0x5C7A7C4B07


class SchemaError(StorageError):
    """The database's schema cannot be used by this version of scratchbot."""


class SchemaTooNewError(SchemaError):
    pass


@dataclass(frozen=True)
class SchemaUpgrade:
    from_revision: str | None  # None: the database had no scratchbot schema
    to_revision: str

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for scratchbot's migrations; `url` only for the stand-alone use shown above."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Config values go through configparser interpolation, where "%" (e.g. in an escaped password) is special.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations found in {MIGRATIONS_DIR}"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for a database without a scratchbot schema."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade_database(engine: AsyncEngine) -> SchemaUpgrade:
    """Migrate the database to head as the module docstring says; safe to call on every start."""
    result = await _migrate(engine, _upgrade)
    if result.changed:
        log.info("database schema upgraded from %s to %s", result.from_revision or "empty", result.to_revision)
    else:
        log.debug("database schema is at head %s", result.to_revision)
    return result


def upgrade_database_at(url: str, timeouts: DatabaseTimeouts = DEFAULT_TIMEOUTS) -> SchemaUpgrade:
    """`upgrade_database` for a URL, from synchronous code (the CLI)."""

    async def upgrade() -> SchemaUpgrade:
        engine = create_engine(url, timeouts=timeouts.for_maintenance())
        try:
            return await upgrade_database(engine)
        finally:
            await engine.dispose()

    return asyncio.run(upgrade())


async def downgrade_database(engine: AsyncEngine, revision: str = "base") -> None:
    """Migrate down to `revision` ("base" removes every scratchbot table, and all data with them)."""

    def downgrade(connection: Connection, config: Config) -> None:
        _check_known(connection, ScriptDirectory.from_config(config))
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    await _migrate(engine, downgrade)
    log.info("database schema downgraded to %s", revision)


def _upgrade(connection: Connection, config: Config) -> SchemaUpgrade:
    script = ScriptDirectory.from_config(config)
    current = _check_known(connection, script)
    head = script.get_current_head()
    assert head is not None, f"no migrations found in {MIGRATIONS_DIR}"
    if current != head:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return SchemaUpgrade(from_revision=current, to_revision=head)


def _check_known(connection: Connection, script: ScriptDirectory) -> str | None:
    current = MigrationContext.configure(connection).get_current_revision()
    known = {s.revision for s in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(
            f"the database is at schema revision {current!r}, which this version of scratchbot does not know "
            f"(it knows up to {script.get_current_head()!r}): a newer scratchbot has migrated it. "
            "Upgrade scratchbot to that newer version, or point it at another database."
        )
    return current


async def _migrate(engine: AsyncEngine, step: Callable[[Connection, Config], T]) -> T:
    """Run `step` in one transaction on a connection set up for migrating, and commit."""
    async with connect(engine) as connection:
        try:
            async with unavailable_as_error():
                return await _migrate_on(connection, step)
        except DatabaseUnavailableError as e:
            raise DatabaseUnavailableError(
                f"migrating the database {describe_database(engine.url)} failed: {e}. Check that it can be reached "
                "and written, then start again (nothing was changed)"
            ) from e


async def _migrate_on(connection: AsyncConnection, step: Callable[[Connection, Config], T]) -> T:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Must happen outside a transaction: inside one, SQLite silently ignores this pragma.
        await connection.run_sync(_execute_outside_transaction, "PRAGMA foreign_keys=OFF")
    try:
        async with connection.begin():
            if not sqlite:
                # Waits while another bot process migrates (the maintenance timeout bounds it, not the user one).
                await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            result = await connection.run_sync(step, alembic_config())
            if sqlite:
                # With foreign keys off nothing checked them while tables were rebuilt; check before committing.
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise SchemaError(f"the migration would leave rows with dangling references: {broken[:5]}")
    finally:
        if sqlite:
            # Never hand this connection (foreign keys off) back to the pool.
            await connection.invalidate()
    return result


def _execute_outside_transaction(connection: Connection, sql: str) -> None:
    # The DBAPI connection is in autocommit (db.py sets isolation_level=None), and going around SQLAlchemy's
    # Connection avoids its autobegin, which would emit BEGIN IMMEDIATE first.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
