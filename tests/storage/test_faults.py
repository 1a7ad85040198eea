"""A database that is down, hung, full, read-only or locked: every Store call fails within a bounded time with one
DatabaseUnavailableError that names the cause, nothing half-written, and the store works again once the database
is back, without a restart."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from storage.db import DatabaseTimeouts, DatabaseUnavailableError, create_engine, sqlite_url, unavailable_reason
from storage.migrate import _PG_MIGRATION_LOCK, upgrade_database
from storage.records import ConversationKey, Role
from storage.store import Store, open_store
from tests.storage.conftest import postgres_behind_proxy, postgres_schema

KEY = ConversationKey("discord", "g1", "c1")
FAST = DatabaseTimeouts(connect_s=0.5, statement_s=1.0)
# Generous next to FAST: a ping that times out, a reconnect that times out, a loaded machine. Without the timeouts
# these calls never return at all (a black-holed server) or take 30 s and more.
BOUND_S = 12.0


async def add(store: Store, text: str = "hello") -> None:
    await store.add_message(KEY, role=Role.USER, author_id="u1", text=text)


async def texts(store: Store) -> list[str]:
    return [m.text for m in await store.recent_history(KEY)]


async def fails_in_time(store: Store, cause: str) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=cause):
        await asyncio.wait_for(add(store, "lost"), BOUND_S * 2)  # wait_for only keeps a broken build from hanging
    assert time.monotonic() - started < BOUND_S


# ------------------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("refuse", r"the connection to the database failed \(Connect call failed"),
        ("drop", r"the connection to the database failed \(Connection reset by peer\)"),
        ("blackhole", "the database did not answer in time"),
    ],
)
async def test_postgres_down_or_hung_fails_fast_then_recovers_by_itself(mode: str, cause: str) -> None:
    async with postgres_behind_proxy(FAST) as (proxy, store):
        await add(store, "before")  # the pool now holds a connection that the fault will break
        await proxy.set_mode(mode)  # type: ignore[arg-type]
        await fails_in_time(store, cause)
        await fails_in_time(store, cause)  # again: a broken pooled connection is not handed out twice
        await proxy.set_mode("pass")
        await add(store, "after")
        assert await texts(store) == ["before", "after"]


@pytest.mark.postgres
async def test_a_server_that_hangs_mid_transaction_does_not_hang_the_caller() -> None:
    async with postgres_behind_proxy(FAST) as (proxy, store):
        await add(store, "before")
        original = store._conversation

        async def hang_then_continue(session: Any, key: ConversationKey) -> tuple[int, Any]:
            found = await original(session, key)
            await proxy.set_mode("blackhole")  # the insert that follows is swallowed
            return found

        store._conversation = hang_then_continue  # type: ignore[method-assign]
        await fails_in_time(store, "did not answer in time")
        store._conversation = original  # type: ignore[method-assign]
        await proxy.set_mode("pass")
        assert await texts(store) == ["before"]  # nothing half-written


# ----------------------------------------------------------------------------------------------------- SQLite


@contextmanager
def read_only(path: Path) -> Iterator[Callable[[], None]]:
    """Make ``path`` read-only for this process, root included (permission bits alone do not stop root: the
    immutable attribute does). Yields the function that makes it writable again."""
    os.chmod(path, 0o444)
    as_root = os.geteuid() == 0
    if as_root and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        os.chmod(path, 0o644)
        pytest.skip("running as root without chattr: cannot make a file read-only for this process")

    def make_writable() -> None:
        if as_root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, 0o644)

    try:
        yield make_writable
    finally:
        make_writable()


@asynccontextmanager
async def sqlite_store(path: Path, timeouts: DatabaseTimeouts = FAST) -> AsyncIterator[Store]:
    async with open_store(sqlite_url(path), timeouts) as store:
        yield store


async def test_a_read_only_sqlite_file_is_reported_and_recovered_from(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    async with sqlite_store(path) as store:
        await add(store, "before")
    with read_only(path) as make_writable:
        async with sqlite_store(path) as store:  # a (re)start onto a file that cannot be written: reading works
            assert await texts(store) == ["before"]
            await fails_in_time(store, "the database file is read-only")
            make_writable()  # fixed while the bot runs: the next write succeeds without a restart
            await add(store, "after")
            assert await texts(store) == ["before", "after"]


async def test_a_full_sqlite_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    async with sqlite_store(path) as store:
        await add(store)
        engine = store._sessions.kw["bind"]

        @event.listens_for(engine.sync_engine, "connect")
        def _no_room(dbapi_connection: Any, _record: Any) -> None:  # as a disk with no space left would behave
            size = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {size}")

        await engine.dispose()  # new connections, each with the limit
        with pytest.raises(DatabaseUnavailableError, match="the disk holding the database is full"):
            await add(store, "x" * 100_000)
        assert await texts(store) == ["hello"]


async def test_a_sqlite_lock_held_past_the_busy_timeout_is_reported_in_time(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    async with sqlite_store(path, DatabaseTimeouts(statement_s=0.3)) as store:
        await add(store)
        other = sqlite3.connect(path, isolation_level=None)  # another program, holding the write lock
        other.execute("BEGIN IMMEDIATE")
        try:
            await fails_in_time(store, "another program holds the database locked")
        finally:
            other.execute("ROLLBACK")
            other.close()
        await add(store, "after")
        assert await texts(store) == ["hello", "after"]


# ------------------------------------------------------------------------------------------- what is an outage


def test_constraint_violations_and_bugs_are_not_reported_as_an_outage() -> None:
    assert unavailable_reason(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))) is None
    assert unavailable_reason(ValueError("a bug")) is None
    assert unavailable_reason(ConnectionRefusedError(111, "Connection refused")) is not None
    assert unavailable_reason(TimeoutError()) == "the database did not answer in time"


# --------------------------------------------------------------------------------------- what is not an outage


@pytest.mark.postgres
async def test_migrations_and_retention_wait_longer_than_a_user_would() -> None:
    """A replica starting while another migrates waits for its lock; retention on a busy table waits its turn. The
    short statement timeout is for users, who must hear back; it must not fail work nobody waits on."""
    async with postgres_schema() as (url, schema):
        server_settings = {"server_settings": {"search_path": schema}}
        admin = create_engine(url, connect_args=server_settings)
        short = DatabaseTimeouts(connect_s=1, statement_s=0.3)
        try:
            await upgrade_database(admin)
            async with admin.connect() as other:  # another process, migrating
                await other.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})")
                unlock = f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})"
                releasing = asyncio.create_task(_release_later(other, unlock))
                engine = create_engine(url, timeouts=short.for_maintenance(), connect_args=server_settings)
                try:
                    assert not (await upgrade_database(engine)).changed  # waited past 0.3 s, then found it done
                finally:
                    await engine.dispose()
                await releasing
            engine = create_engine(url, timeouts=short, connect_args=server_settings)
            maintenance = create_engine(url, timeouts=short.for_maintenance(), connect_args=server_settings)
            store = Store(engine, maintenance)
            try:
                await add(store, "old")
                async with admin.connect() as other:
                    await other.exec_driver_sql("BEGIN")
                    await other.exec_driver_sql("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                    releasing = asyncio.create_task(_release_later(other, "COMMIT"))
                    with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
                        await add(store, "a user's message, while the table is locked")
                    result = await store.delete_older_than(datetime.now(UTC) + timedelta(days=1))
                    await releasing
                assert result.messages == 1
            finally:
                await engine.dispose()
                await maintenance.dispose()
        finally:
            await admin.dispose()


async def _release_later(connection: Any, sql: str) -> None:
    await asyncio.sleep(1.0)
    await connection.exec_driver_sql(sql)


@pytest.mark.postgres
async def test_a_server_turned_read_only_is_left_for_a_writable_one() -> None:
    """After a failover the old primary may answer as a read-only standby: its connections pass the pre-ping, so
    they must be thrown away on the first refusal, or the bot never recovers."""
    async with postgres_behind_proxy(FAST) as (_, store):
        await add(store, "before")
        engine = store._sessions.kw["bind"]
        async with engine.connect() as connection:  # the pooled connection now talks to a read-only server
            await connection.exec_driver_sql("SET SESSION default_transaction_read_only = on")
            await connection.commit()
        with pytest.raises(DatabaseUnavailableError, match="read-only"):
            await add(store, "refused")
        await add(store, "after")  # on a new connection
        assert await texts(store) == ["before", "after"]
