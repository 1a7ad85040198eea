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
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine, sqlite_url
from storage.migrate import upgrade_database
from storage.store import Store

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
    url = postgres_url_or_skip()
    schema = f"scratchbot_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url)
    try:
        async with admin.begin() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield engine
        finally:
            await engine.dispose()
            async with admin.begin() as connection:
                await connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.dispose()


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async for made in make_engine(request.param, tmp_path):
        yield made


@pytest.fixture
async def store(engine: AsyncEngine) -> Store:
    await upgrade_database(engine)
    return Store(engine)
