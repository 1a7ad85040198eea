"""Engine set-up: which URLs are accepted, and the SQLite settings that make concurrent writers queue."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import (
    DEFAULT_DATABASE_URL,
    DatabaseTimeouts,
    DatabaseURLError,
    create_engine,
    describe_database,
    normalize_url,
    sqlite_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/x.db", "sqlite+aiosqlite:///data/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://bot:pw@db:5432/bot", "postgresql+asyncpg://bot:pw@db:5432/bot"),
        ("postgres://bot@db/bot", "postgresql+asyncpg://bot@db/bot"),
    ],
)
def test_plain_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert normalize_url(url).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/bot", "not supported; use SQLite"),
        ("postgresql+psycopg2://db/bot", r"write the URL as postgresql\+asyncpg://"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("not a url", "cannot parse the database URL"),
    ],
)
def test_unusable_urls_are_refused_with_what_to_write_instead(url: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message):
        normalize_url(url)


@pytest.mark.parametrize(
    ("url", "problem", "shown"),
    [
        ("postgresql+asyncpg//bot:s3cret@db/bot", "no '://'", "postgresql+asyncpg//bot:***@db/bot"),
        ("postgresql+asyncpg:/bot:s3cret@db/bot", "no '://'", "postgresql+asyncpg:/bot:***@db/bot"),
        ("bot:s3cret@db/bot", "no '://'", "bot:***@db/bot"),
        ("postgresql+asyncpg://bot:s3cret/bot", "port after the host's ':' must be a number", "bot:***/bot"),
        ("postgresql://bot:s3cret@db:x/bot", "port after the host's ':' must be a number", "bot:***@db:x/bot"),
        ("post gres://bot:s3c:ret@db/bot", "must be a database name", "post gres:***@db/bot"),
        ("postgresql://bot:s3c@ret@db/bot", "contains '@'; percent-encode it as %40", "postgresql://bot:***@db/bot"),
    ],
)
def test_a_url_that_cannot_be_used_is_shown_without_its_password(url: str, problem: str, shown: str) -> None:
    with pytest.raises(DatabaseURLError) as refused:
        normalize_url(url)
    message = str(refused.value)
    assert "s3c" not in message and "ret@" not in message
    assert problem in message and shown in message
    if "@" not in problem:
        assert "postgresql+asyncpg://user:password@host:5432/dbname" in message  # the form to write instead


def test_a_password_given_as_a_parameter_is_not_shown_either() -> None:
    url = normalize_url("postgresql://bot@db/bot?password=s3cret&ssl=require")
    assert describe_database(url) == "postgresql+asyncpg://bot@db/bot?password=%2A%2A%2A&ssl=require"


def test_the_default_database_is_a_file_under_data() -> None:
    assert DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///data/scratchbot.db"


async def test_sqlite_creates_the_data_directory_and_sets_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    engine: AsyncEngine = create_engine(sqlite_url(path), timeouts=DatabaseTimeouts(statement_s=2.5))
    try:
        assert path.parent.is_dir()
        async with engine.connect() as connection:
            pragmas = [
                (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            ]
        assert pragmas == ["wal", 2_500, 1]  # the busy timeout is the statement timeout setting
        assert path.is_file()
    finally:
        await engine.dispose()


def test_a_postgresql_url_without_the_driver_installed_says_which_extra_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # what `import asyncpg` sees when it is not installed
    with pytest.raises(DatabaseURLError, match=r"scratchbot\[postgres\]"):
        create_engine("postgresql://bot@db/bot")
