"""What the Store promises its callers, operation by operation, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import Base
from storage.records import ConversationKey, Generation, Role, dm_channel, dm_tenant
from storage.store import Store

KEY = ConversationKey("discord", "guild-1", "channel-1")
SHA = "0123456789abcdef" * 4
GENERATION = Generation("gpt2-medium355M-sft.pth", SHA, {"temperature": 0.7, "top_k": 50, "max_new_tokens": 256})


async def say(store: Store, key: ConversationKey, text: str, author: str = "alice", message_id: str | None = None):
    return (
        await store.add_message(key, role="user", author_id=author, text=text, platform_message_id=message_id)
    ).message


async def texts(store: Store, key: ConversationKey, limit: int = 100) -> list[str]:
    return [m.text for m in await store.recent_history(key, limit)]


# -- conversations --------------------------------------------------------------------------------------------------


async def test_the_same_key_is_the_same_conversation_and_a_thread_another(store: Store) -> None:
    first = await store.add_message(KEY, role="user", author_id="a", text="one")
    again = await store.add_message(ConversationKey("discord", "guild-1", "channel-1", ""), role="user", author_id="a",
                                    text="two")  # fmt: skip
    in_thread = await store.add_message(ConversationKey("discord", "guild-1", "channel-1", "thread-9"), role="user",
                                        author_id="a", text="three")  # fmt: skip

    assert again.message.conversation_id == first.message.conversation_id
    assert first.message.created_at.tzinfo is not None
    assert in_thread.message.conversation_id != first.message.conversation_id


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("", "g", "c"), "platform must not be empty"),
        (("discord", "", "c"), "tenant must not be empty"),
        (("discord", "g", "x" * 129), "channel is 129 characters long"),
    ],
)
def test_a_conversation_key_with_an_unusable_id_is_refused(fields: tuple[str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConversationKey(*fields)


# -- adding messages and reading history ----------------------------------------------------------------------------


async def test_added_message_comes_back_in_history_with_everything_the_caller_gave(store: Store) -> None:
    sent_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    added = await store.add_message(
        KEY, role=Role.USER, author_id="alice", text="hello", platform_message_id="m-1", created_at=sent_at
    )
    reply = await store.add_message(
        KEY, role="assistant", author_id="bot", text="hi!", platform_message_id="m-2", generation=GENERATION
    )

    history = await store.recent_history(KEY)

    assert history == [added.message, reply.message]
    user, assistant = history
    assert (user.role, user.author_id, user.platform_message_id, user.generation) == (Role.USER, "alice", "m-1", None)
    assert user.created_at == sent_at and user.created_at.tzinfo == UTC
    assert assistant.role is Role.ASSISTANT and assistant.generation == GENERATION
    assert assistant.created_at.tzinfo == UTC and assistant.created_at > user.created_at


async def test_history_is_newest_last_and_bounded_by_count(store: Store) -> None:
    for i in range(30):
        await say(store, KEY, f"turn {i}")

    assert await texts(store, KEY, limit=5) == [f"turn {i}" for i in range(25, 30)]
    assert len(await store.recent_history(KEY)) == 20
    assert await texts(store, ConversationKey("discord", "guild-1", "never-used")) == []
    with pytest.raises(ValueError, match="at least 1"):
        await store.recent_history(KEY, limit=0)


async def test_the_same_platform_message_twice_is_stored_once_and_reported_as_duplicate(store: Store) -> None:
    first = await store.add_message(KEY, role="user", author_id="alice", text="original", platform_message_id="m-1")
    retry = await store.add_message(KEY, role="user", author_id="alice", text="retried", platform_message_id="m-1")

    assert not first.duplicate and retry.duplicate
    assert retry.message == first.message
    assert await texts(store, KEY) == ["original"]


async def test_turns_without_a_platform_id_are_never_taken_for_duplicates(store: Store) -> None:
    for _ in range(3):
        assert not (await store.add_message(KEY, role="user", author_id="alice", text="same")).duplicate
    assert await texts(store, KEY) == ["same"] * 3


async def test_the_same_platform_id_in_another_conversation_is_another_message(store: Store) -> None:
    other = ConversationKey("slack", "T1", "C1")
    await say(store, KEY, "discord", message_id="1700000000.000100")
    assert not (
        await store.add_message(
            other, role="user", author_id="U", text="slack", platform_message_id="1700000000.000100"
        )
    ).duplicate


async def test_add_message_refuses_what_it_cannot_store_faithfully(store: Store) -> None:
    with pytest.raises(ValueError, match="'robot' is not a valid Role"):
        await store.add_message(KEY, role="robot", author_id="a", text="x")
    with pytest.raises(ValueError, match="generation settings"):
        await store.add_message(KEY, role="user", author_id="a", text="x", generation=GENERATION)
    with pytest.raises(ValueError, match="no timezone"):
        await store.add_message(KEY, role="user", author_id="a", text="x", created_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="SHA-256"):
        Generation("ckpt.pth", "not-a-digest", {})
    assert await store.recent_history(KEY) == []


# -- deleting -------------------------------------------------------------------------------------------------------


async def test_delete_messages_removes_them_by_platform_id_in_any_thread_of_the_channel(store: Store) -> None:
    thread = ConversationKey("discord", "guild-1", "channel-1", "thread-1")
    elsewhere = ConversationKey("discord", "guild-2", "channel-1")
    await say(store, KEY, "keep", message_id="m-1")
    await say(store, thread, "delete me", message_id="m-2")
    await say(store, KEY, "delete me too", message_id="m-3")
    await say(store, elsewhere, "same id, other guild", message_id="m-2")

    def delete(*ids: str) -> Awaitable[int]:
        return store.delete_messages(
            platform="discord", tenant="guild-1", channel="channel-1", platform_message_ids=list(ids)
        )

    assert await delete("m-2", "m-3", "never-stored") == 2  # a moderator's bulk deletion
    assert await texts(store, thread) == []
    assert await texts(store, KEY) == ["keep"]
    assert await texts(store, elsewhere) == ["same id, other guild"]
    assert await delete("m-2") == 0
    assert await delete() == 0


async def test_purge_channel_deletes_the_channel_with_its_threads_and_settings(store: Store) -> None:
    thread = ConversationKey("discord", "guild-1", "channel-1", "thread-1")
    other_channel = ConversationKey("discord", "guild-1", "channel-2")
    other_guild = ConversationKey("discord", "guild-2", "channel-1")
    for key in (KEY, thread, other_channel, other_guild):
        await say(store, key, f"in {key}")
    for channel in ("channel-1", "channel-2"):
        await store.update_channel_settings(
            platform="discord", tenant="guild-1", channel=channel, changes={"temperature": 0.5}, updated_by="admin"
        )

    assert await store.purge_channel("discord", "guild-1", "channel-1") == 2

    assert await texts(store, KEY) == [] and await texts(store, thread) == []
    assert await texts(store, other_channel) == [f"in {other_channel}"]
    assert await texts(store, other_guild) == [f"in {other_guild}"]
    assert await store.get_channel_settings(platform="discord", tenant="guild-1", channel="channel-1") == {}
    assert await store.get_channel_settings(platform="discord", tenant="guild-1", channel="channel-2") != {}


async def test_purge_channel_with_a_thread_deletes_only_that_thread(store: Store) -> None:
    thread = ConversationKey("discord", "guild-1", "channel-1", "thread-1")
    sibling = ConversationKey("discord", "guild-1", "channel-1", "thread-2")
    for key in (KEY, thread, sibling):
        await say(store, key, "hello")
    await store.update_channel_settings(
        platform="discord", tenant="guild-1", channel="channel-1", changes={"temperature": 0.5}, updated_by="admin"
    )

    assert await store.purge_channel("discord", "guild-1", "channel-1", "thread-1") == 1

    assert await texts(store, thread) == []
    assert await texts(store, KEY) == ["hello"] and await texts(store, sibling) == ["hello"]
    assert await store.get_channel_settings(platform="discord", tenant="guild-1", channel="channel-1") != {}


async def test_forget_user_deletes_their_messages_everywhere_and_their_dms_whole(store: Store) -> None:
    guild_a, guild_b = KEY, ConversationKey("discord", "guild-2", "general", "t-1")
    dm = ConversationKey("discord", dm_tenant("alice"), "dm-channel-alice")
    slack = ConversationKey("slack", "T1", "C1")
    await say(store, guild_a, "alice in a")
    await say(store, guild_a, "bob in a", author="bob")
    await say(store, guild_b, "alice in b")
    await say(store, dm, "alice's secret")
    await store.add_message(dm, role="assistant", author_id="bot", text="reply to the secret", generation=GENERATION)
    await say(store, ConversationKey("discord", dm_tenant("bob"), "dm-channel-bob"), "bob's dm", author="bob")
    await say(store, slack, "alice on slack: another platform, another account")

    assert await store.forget_user("discord", "alice") == 4

    assert await texts(store, guild_a) == ["bob in a"]
    assert await texts(store, guild_b) == []
    assert await texts(store, dm) == []
    assert await texts(store, ConversationKey("discord", dm_tenant("bob"), "dm-channel-bob")) == ["bob's dm"]
    assert await texts(store, slack) == ["alice on slack: another platform, another account"]
    assert await store.forget_user("discord", "alice") == 0


async def test_forget_user_removes_a_dm_filed_inside_a_workspace_whole_and_purge_tenant_removes_it_too(
    store: Store,
) -> None:
    # Slack files a DM under its workspace (so uninstalling removes it) in the user's DM channel.
    dm = ConversationKey("slack", "T1", dm_channel("U-alice"))
    other_dm = ConversationKey("slack", "T1", dm_channel("U-bob"))
    channel = ConversationKey("slack", "T1", "C1", "1700.1")
    await say(store, dm, "alice's secret", author="U-alice")
    await store.add_message(dm, role="assistant", author_id="bot", text="reply to the secret", generation=GENERATION)
    await store.update_channel_settings(
        platform="slack", tenant="T1", channel=dm_channel("U-alice"), changes={"x": 1}, updated_by="U-alice"
    )
    await say(store, other_dm, "bob's dm", author="U-bob")
    await say(store, channel, "alice in a channel", author="U-alice")
    await store.add_message(channel, role="assistant", author_id="bot", text="answer in the channel")

    assert await store.forget_user("slack", "U-alice") == 3

    assert await texts(store, dm) == []
    assert await store.get_channel_settings(platform="slack", tenant="T1", channel=dm_channel("U-alice")) == {}
    assert await texts(store, other_dm) == ["bob's dm"]
    assert await texts(store, channel) == ["answer in the channel"]
    assert await store.forget_user("discord", "U-bob") == 0  # another platform's account of the same id

    assert await store.purge_tenant("slack", "T1") == 2
    assert await texts(store, other_dm) == []


async def every_stored_value(engine: AsyncEngine) -> str:
    """Every value in every table, as one string to search."""
    dump = []
    async with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in await connection.execute(select(table))]
    return "\n".join(dump)


async def test_forget_user_and_purge_leave_nothing_of_them_behind(engine: AsyncEngine, store: Store) -> None:
    dm = ConversationKey("discord", dm_tenant("carol-7731"), "dm-carol")
    await say(store, KEY, "carol's public words", author="carol-7731", message_id="c-1")
    await say(store, dm, "carol's private words", author="carol-7731", message_id="c-2")
    await store.add_message(dm, role="assistant", author_id="bot", text="answering carol's private words")
    await store.update_channel_settings(
        platform="discord",
        tenant=dm_tenant("carol-7731"),
        channel="dm-carol",
        changes={"x": 1},
        updated_by="carol-7731",
    )
    tenant = ConversationKey("slack", "T-evicted-42", "C1")
    await say(store, tenant, "workspace words", author="U1")
    await store.update_channel_settings(
        platform="slack", tenant="T-evicted-42", channel="C1", changes={"x": 1}, updated_by="U1"
    )
    assert "carol" in await every_stored_value(engine) and "T-evicted-42" in await every_stored_value(engine)

    await store.forget_user("discord", "carol-7731")
    await store.purge_tenant("slack", "T-evicted-42")

    remaining = await every_stored_value(engine)
    assert "carol" not in remaining
    assert "T-evicted-42" not in remaining and "workspace words" not in remaining


async def test_purge_tenant_removes_its_conversations_and_settings_and_nothing_else(store: Store) -> None:
    gone = ConversationKey("slack", "T-gone", "C1")
    await say(store, gone, "one")
    await say(store, ConversationKey("slack", "T-gone", "C2", "1700.1"), "two")
    await say(store, ConversationKey("slack", "T-kept", "C1"), "kept")
    await say(store, ConversationKey("discord", "T-gone", "C1"), "same id on another platform")
    await store.update_channel_settings(
        platform="slack", tenant="T-gone", channel="C1", changes={"x": 1}, updated_by="a"
    )
    await store.update_channel_settings(
        platform="slack", tenant="T-kept", channel="C1", changes={"x": 2}, updated_by="a"
    )

    assert await store.purge_tenant("slack", "T-gone") == 2

    assert await texts(store, gone) == []
    assert await store.get_channel_settings(platform="slack", tenant="T-gone", channel="C1") == {}
    assert await texts(store, ConversationKey("slack", "T-kept", "C1")) == ["kept"]
    assert await store.get_channel_settings(platform="slack", tenant="T-kept", channel="C1") == {"x": 2}
    assert await texts(store, ConversationKey("discord", "T-gone", "C1")) == ["same id on another platform"]
    # A new message afterwards starts a fresh conversation rather than reviving the old one.
    assert (await say(store, gone, "new")).id > 0 and await texts(store, gone) == ["new"]


async def test_retention_deletes_what_is_older_than_the_cutoff_and_is_idempotent(store: Store) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=1)
    stale = ConversationKey("discord", "g", "stale")
    await store.add_message(stale, role="user", author_id="a", text="old", created_at=old)
    await store.add_message(KEY, role="user", author_id="a", text="old too", created_at=old)
    await store.add_message(KEY, role="user", author_id="a", text="recent", created_at=recent)
    await store.mark_event_processed("slack", "Ev-1")

    first = await store.delete_older_than(now - timedelta(days=30))
    second = await store.delete_older_than(now - timedelta(days=30))

    assert (first.messages, first.events) == (2, 0)
    assert second == type(second)(messages=0, conversations=0, events=0)
    assert await texts(store, KEY) == ["recent"] and await texts(store, stale) == []
    # Event ids expire too, once older than the cutoff.
    assert (await store.delete_older_than(datetime.now(UTC) + timedelta(seconds=1))).events == 1
    assert await store.mark_event_processed("slack", "Ev-1")


async def test_retention_removes_conversations_left_empty_only(store: Store) -> None:
    now = datetime.now(UTC)
    await store.add_message(KEY, role="user", author_id="a", text="old", created_at=now - timedelta(days=9))

    # The conversation was created just now, after this cutoff: it stays, though its only message goes.
    assert (await store.delete_older_than(now - timedelta(days=1))).conversations == 0
    assert (await store.delete_older_than(datetime.now(UTC) + timedelta(seconds=1))).conversations == 1
    assert await store.recent_history(KEY) == []


# -- channel settings -----------------------------------------------------------------------------------------------


async def test_channel_settings_merge_changes_and_none_removes_a_key(store: Store) -> None:
    where = {"platform": "discord", "tenant": "guild-1", "channel": "channel-1"}
    assert await store.get_channel_settings(**where) == {}

    await store.update_channel_settings(**where, changes={"temperature": 0.7, "enabled": True}, updated_by="admin")
    merged = await store.update_channel_settings(
        **where, changes={"temperature": None, "max_new_tokens": 128}, updated_by="admin"
    )

    assert merged == {"enabled": True, "max_new_tokens": 128}
    assert await store.get_channel_settings(**where) == merged
    assert await store.get_channel_settings(platform="discord", tenant="guild-1", channel="channel-2") == {}
    assert await store.get_channel_settings(platform="discord", tenant="guild-2", channel="channel-1") == {}


# -- accountability -------------------------------------------------------------------------------------------------


async def test_checkpoint_loads_are_recorded_and_listed_newest_first(store: Store) -> None:
    ok = await store.record_checkpoint_load(name="sft.pth", sha256=SHA, requested_by="admin-1", succeeded=True)
    failed = await store.record_checkpoint_load(
        name="broken.pth", sha256=None, requested_by="admin-2", succeeded=False, detail="not a GPT-2 state dict"
    )

    assert await store.recent_checkpoint_loads() == [failed, ok]
    assert await store.recent_checkpoint_loads(limit=1) == [failed]
    assert (ok.name, ok.sha256, ok.requested_by, ok.succeeded) == ("sft.pth", SHA, "admin-1", True)
    assert failed.detail == "not a GPT-2 state dict" and failed.created_at >= ok.created_at
    with pytest.raises(ValueError, match="SHA-256"):
        await store.record_checkpoint_load(name="x", sha256="ABC", requested_by="a", succeeded=True)


async def test_audit_entries_are_recorded_and_filtered_by_tenant(store: Store) -> None:
    reload_ = await store.record_audit(
        platform="discord",
        tenant="guild-1",
        actor_id="admin",
        action="checkpoint.reload",
        target="sft.pth",
        detail={"sha256": SHA},
    )
    forget = await store.record_audit(platform="slack", tenant="T1", actor_id="U-admin", action="user.forget")

    assert await store.audit_entries() == [forget, reload_]
    assert await store.audit_entries(platform="discord", tenant="guild-1") == [reload_]
    assert reload_.detail == {"sha256": SHA} and forget.target == "" and forget.detail == {}
    with pytest.raises(ValueError, match="1 to 64 characters"):
        await store.record_audit(platform="slack", tenant="T1", actor_id="U", action="")


# -- platform event de-duplication ----------------------------------------------------------------------------------


async def test_an_event_id_is_new_once_per_platform(store: Store) -> None:
    assert await store.mark_event_processed("slack", "Ev0123")
    assert not await store.mark_event_processed("slack", "Ev0123")
    assert await store.mark_event_processed("discord", "Ev0123")
