"""Every storage test runs twice: against a throwaway SQLite file and against the real PostgreSQL server.

PostgreSQL is named by SCRATCHBOT_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test). Without
it those tests skip, unless SCRATCHBOT_REQUIRE_POSTGRES=1 (CI) turns the skip into a failure. Each test gets its own
PostgreSQL schema, dropped afterwards, so concurrent runs against one server do not see each other.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import DEFAULT_TIMEOUTS, DatabaseTimeouts, create_engine, sqlite_url
from storage.migrate import upgrade_database
from storage.store import Store
from tests.fault_proxy import FaultProxy

log = logging.getLogger(__name__)

POSTGRES_URL_VAR = "SCRATCHBOT_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_VAR = "SCRATCHBOT_REQUIRE_POSTGRES"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_url_or_skip() -> str:
    url = os.environ.get(POSTGRES_URL_VAR)
    if url:
        return url
    reason = (
        f"PostgreSQL tests need {POSTGRES_URL_VAR}, e.g. "
        f"{POSTGRES_URL_VAR}=postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    if os.environ.get(REQUIRE_POSTGRES_VAR) == "1":
        pytest.fail(f"{reason} ({REQUIRE_POSTGRES_VAR}=1 forbids skipping them)")
    pytest.skip(reason)


async def make_engine(backend: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database of `backend`, disposed (and for PostgreSQL, its schema dropped) afterwards."""
    if backend == "sqlite":
        # A directory that does not exist yet: the engine must create it.
        engine = create_engine(sqlite_url(tmp_path / "data" / "scratchbot.db"))
        try:
            yield engine
        finally:
            await engine.dispose()
        return
    async with postgres_schema() as (url, schema):
        engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield engine
        finally:
            await engine.dispose()


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """The test server's URL and a schema of this test's own, dropped afterwards."""
    url = postgres_url_or_skip()
    schema = f"scratchbot_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url)
    try:
        async with admin.begin() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            yield url, schema
        finally:
            async with admin.begin() as connection:
                await connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.dispose()


@asynccontextmanager
async def postgres_behind_proxy(
    timeouts: DatabaseTimeouts = DEFAULT_TIMEOUTS,
) -> AsyncIterator[tuple[FaultProxy, Store]]:
    """A migrated store on the test server, reached through a `FaultProxy` the test can break at will."""
    async with postgres_schema() as (url, schema), FaultProxy(*_host_and_port(url)) as proxy:
        through_proxy = make_url(url).set(host="127.0.0.1", port=proxy.port)
        engine = create_engine(
            through_proxy, timeouts=timeouts, connect_args={"server_settings": {"search_path": schema}}
        )
        try:
            await upgrade_database(engine)
            yield proxy, Store(engine)
        finally:
            await engine.dispose()


def _host_and_port(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async for made in make_engine(request.param, tmp_path):
        yield made


@pytest.fixture
async def store(engine: AsyncEngine) -> Store:
    await upgrade_database(engine)
    return Store(engine)
