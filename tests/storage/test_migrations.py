"""Alembic migrations: what start-up and `scratchbot db upgrade` do to an empty, a current and a too-new database."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.migrate import (
    SchemaTooNewError,
    current_revision,
    downgrade_database,
    head_revision,
    upgrade_database,
)
from storage.models import Base
from storage.records import ConversationKey, dm_tenant
from storage.store import Store

TABLES = {"conversations", "messages", "channel_settings", "checkpoint_loads", "audit_log", "processed_events"}


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_an_empty_database_is_migrated_to_head(engine: AsyncEngine) -> None:
    assert await current_revision(engine) is None

    result = await upgrade_database(engine)

    assert (result.from_revision, result.to_revision, result.changed) == (None, head_revision(), True)
    assert await current_revision(engine) == head_revision()
    assert await table_names(engine) >= TABLES


async def test_upgrading_a_current_database_changes_nothing_and_keeps_data(engine: AsyncEngine) -> None:
    await upgrade_database(engine)
    key = ConversationKey("discord", "g", "c")
    await Store(engine).add_message(key, role="user", author_id="u", text="kept")

    result = await upgrade_database(engine)

    assert not result.changed
    assert [m.text for m in await Store(engine).recent_history(key)] == ["kept"]


async def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(engine: AsyncEngine) -> None:
    await upgrade_database(engine)

    await downgrade_database(engine, "base")

    assert await current_revision(engine) is None
    assert not TABLES & await table_names(engine)
    # An older known state (here: base, with Alembic's version table left behind) is upgraded again.
    assert (await upgrade_database(engine)).from_revision is None
    assert await table_names(engine) >= TABLES


async def test_models_match_head_migration(engine: AsyncEngine) -> None:
    await upgrade_database(engine)

    def pending_changes(connection: Connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as connection:
        assert await connection.run_sync(pending_changes) == []


async def test_a_database_from_a_newer_scratchbot_is_refused_untouched(engine: AsyncEngine) -> None:
    await upgrade_database(engine)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))

    with pytest.raises(SchemaTooNewError, match=r"9999_from_the_future.*Upgrade scratchbot"):
        await upgrade_database(engine)

    assert await current_revision(engine) == "9999_from_the_future"
    assert await table_names(engine) >= TABLES


async def test_foreign_keys_are_enforced_again_after_migrating(engine: AsyncEngine) -> None:
    # On SQLite migrations switch foreign keys off; that connection must not return to the pool.
    await upgrade_database(engine)
    for _ in range(3):
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO messages (conversation_id, role, author_id, text, created_at) "
                        "VALUES (424242, 'user', 'u', 'orphan', CURRENT_TIMESTAMP)"
                    )
                )


async def test_terminal_conversations_of_an_earlier_version_become_direct_ones(engine: AsyncEngine) -> None:
    """0002: the terminal chat files its conversation under the user's direct tenant now; what an earlier version
    filed under "local" moves there, so it stays in the prompt's history and `forget` deletes it whole."""
    await upgrade_database(engine)
    await downgrade_database(engine, "0001")
    old = ConversationKey("console", "local", "terminal")
    store = Store(engine)
    await store.add_message(old, role="user", author_id="ann", text="hello from before")
    await store.add_message(old, role="assistant", author_id="bot", text="hi ann")
    bot_only = ConversationKey("console", "local", "elsewhere")
    await store.add_message(bot_only, role="assistant", author_id="bot", text="no user here")

    await upgrade_database(engine)

    moved = ConversationKey("console", dm_tenant("ann"), "terminal")
    assert [m.text for m in await store.recent_history(moved)] == ["hello from before", "hi ann"]
    assert await store.recent_history(old) == []
    assert [m.text for m in await store.recent_history(bot_only)] == ["no user here"]  # no owner: left alone
    assert await store.forget_user("console", "ann") == 2  # whole, the bot's reply included
