"""What a user is told when their message cannot be stored: always true, always what to do, always in bounded time.

"Saved" is said only when the message is in the database; a database that is down, hung, read-only or locked gets
"I could not save your message"; a text no database can hold is refused with why; and the bot recovers by itself
once the database is back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import (
    ANSWER_NOT_SAVED,
    FAILED,
    FAILED_SAVED,
    NOT_SAVED,
    SAVED_UNANSWERED,
    UNAVAILABLE,
    ConversationManager,
    ManagerConfig,
)
from bot.core.messages import Incoming
from bot.core.ratelimit import RateLimiter
from llm.tokenizer import Tokenizer
from storage.db import DatabaseTimeouts, sqlite_url
from storage.records import ConversationKey, Role
from storage.store import Store, open_store
from tests.bot.fakes import FakeGenerator, RecordingReply
from tests.storage.conftest import postgres_behind_proxy
from tests.storage.test_faults import read_only

TOKENIZER = Tokenizer()
DEFAULTS = ChannelConfig(max_new_tokens=100, temperature=0.0, top_k=None, top_p=None, history_messages=20)
MSG = Incoming(platform="discord", tenant="g1", channel="c1", author_id="u1", text="What is 2+2?", message_id="m1")
KEY = ConversationKey("discord", "g1", "c1")
FAST = DatabaseTimeouts(connect_s=0.5, statement_s=1.0)
BOUND_S = 12.0  # see tests/storage/test_faults.py: without the timeouts a hung database never answers at all


def build(
    store: Store, generator: FakeGenerator, checkpoints: Path, *, per_minute: int = 100, **config: object
) -> ConversationManager:
    return ConversationManager(
        store,
        generator,
        TOKENIZER,
        AdminPolicy({}),
        RateLimiter(per_minute),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, request_timeout_s=30, **config),  # type: ignore[arg-type]
    )


async def ask(manager: ConversationManager, incoming: Incoming = MSG) -> RecordingReply:
    reply = RecordingReply()
    started = time.monotonic()
    await asyncio.wait_for(manager.handle(incoming, reply), BOUND_S * 2)  # only keeps a broken build from hanging
    assert time.monotonic() - started < BOUND_S, "the user must hear back within a bounded time"
    return reply


async def user_texts(store: Store) -> list[str]:
    return [m.text for m in await store.recent_history(KEY) if m.role is Role.USER]


# ---------------------------------------------------------------------------------------- the database is away


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["refuse", "drop", "blackhole"])
async def test_postgres_down_or_hung_the_user_is_told_the_truth_and_the_bot_recovers(
    mode: str, checkpoints: Path
) -> None:
    generator = FakeGenerator()
    async with postgres_behind_proxy(FAST) as (proxy, store):
        manager = build(store, generator, checkpoints)
        await ask(manager, replace(MSG, message_id="warm-up"))  # connections in the pool, settings in the cache
        await proxy.set_mode(mode)  # type: ignore[arg-type]
        lost = await ask(manager, replace(MSG, text="Are you there?", message_id="m2"))
        assert lost.sent == [NOT_SAVED] and lost.streamed == []
        assert len(generator.prompts) == 1  # nothing was generated for a message that is not stored
        await proxy.set_mode("pass")
        again = await ask(manager, replace(MSG, text="Are you there?", message_id="m3"))
        assert again.streamed == ["The answer is 4."]
        assert await user_texts(store) == ["What is 2+2?", "Are you there?"]  # stored once: the time it was said


@pytest.mark.postgres
async def test_a_database_lost_after_the_message_was_saved_says_it_is_saved(checkpoints: Path) -> None:
    generator = FakeGenerator()
    async with postgres_behind_proxy(FAST) as (proxy, store):
        manager = build(store, generator, checkpoints)
        read_history = store.recent_history

        async def lose_the_database_first(*args: object, **kwargs: object) -> object:
            await proxy.set_mode("refuse")
            return await read_history(*args, **kwargs)  # type: ignore[arg-type]

        store.recent_history = lose_the_database_first  # type: ignore[method-assign]
        reply = await ask(manager)
        assert reply.sent == [SAVED_UNANSWERED] and reply.streamed == []
        store.recent_history = read_history  # type: ignore[method-assign]
        await proxy.set_mode("pass")
        assert await user_texts(store) == ["What is 2+2?"]  # as the user was told


@pytest.mark.postgres
async def test_an_answer_that_cannot_be_stored_is_shown_and_the_user_told_it_is_not_remembered(
    checkpoints: Path,
) -> None:
    generator = FakeGenerator()
    async with postgres_behind_proxy(FAST) as (proxy, store):
        manager = build(store, generator, checkpoints)
        generator.hold = asyncio.Event()
        asking = asyncio.create_task(ask(manager))
        while not generator.prompts:
            await asyncio.sleep(0.01)
        await proxy.set_mode("blackhole")  # the database hangs while the answer streams
        generator.hold.set()
        reply = await asking
        assert reply.streamed == ["The answer is 4."] and reply.sent == [ANSWER_NOT_SAVED]
        await proxy.set_mode("pass")
        history = await store.recent_history(KEY)
        assert [(m.role, m.text) for m in history] == [(Role.USER, "What is 2+2?")]


@pytest.mark.postgres
async def test_commands_that_need_the_database_say_it_is_unavailable(checkpoints: Path) -> None:
    async with postgres_behind_proxy(FAST) as (proxy, store):
        manager = build(store, FakeGenerator(), checkpoints)
        await proxy.set_mode("refuse")
        for command in ("forget", "summarize", "settings"):
            assert (await ask(manager, replace(MSG, command=command, text=""))).sent == [UNAVAILABLE]


@pytest.mark.postgres
async def test_a_redelivery_check_that_cannot_reach_the_database_is_not_silence(checkpoints: Path) -> None:
    async with postgres_behind_proxy(FAST) as (proxy, store):
        manager = build(store, FakeGenerator(), checkpoints)
        await proxy.set_mode("blackhole")
        assert (await ask(manager, replace(MSG, event_id="Ev1"))).sent == [NOT_SAVED]
        await proxy.set_mode("pass")
        assert (await ask(manager, replace(MSG, event_id="Ev1"))).streamed == ["The answer is 4."]
        assert (await ask(manager, replace(MSG, event_id="Ev1", message_id="m2"))).streamed == []  # redelivered


async def test_a_read_only_sqlite_file_gets_the_truth_and_recovers(tmp_path: Path, checkpoints: Path) -> None:
    path = tmp_path / "bot.db"
    async with open_store(sqlite_url(path), FAST):
        pass  # migrated
    generator = FakeGenerator()
    with read_only(path) as make_writable:
        async with open_store(sqlite_url(path), FAST) as store:
            manager = build(store, generator, checkpoints, per_minute=1)
            assert (await ask(manager)).sent == [NOT_SAVED]
            make_writable()
            # Sent again, as told: the lost attempt did not use up the user's one message a minute.
            assert (await ask(manager, replace(MSG, message_id="m2"))).streamed == ["The answer is 4."]
            assert await user_texts(store) == ["What is 2+2?"]


async def test_a_sqlite_lock_held_by_another_program_gets_an_answer_in_bounded_time(
    tmp_path: Path, checkpoints: Path
) -> None:
    path = tmp_path / "bot.db"
    async with open_store(sqlite_url(path), DatabaseTimeouts(statement_s=0.3)) as store:
        manager = build(store, FakeGenerator(), checkpoints)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            assert (await ask(manager)).sent == [NOT_SAVED]
        finally:
            other.execute("ROLLBACK")
            other.close()


# ---------------------------------------------------------------------------------- text no database can hold


@pytest.mark.parametrize(
    ("text", "why"),
    [("before\x00after", "a NUL character (U+0000)"), ("half an emoji \ud83d", "a lone surrogate, U+D83D")],
)
async def test_text_that_can_never_be_stored_is_refused_with_why(
    store: Store, checkpoints: Path, text: str, why: str
) -> None:
    generator = FakeGenerator()
    reply = await ask(build(store, generator, checkpoints), replace(MSG, text=text))
    assert len(reply.sent) == 1 and why in reply.sent[0] and "Remove it and send your message again" in reply.sent[0]
    assert "saved" not in reply.sent[0] and generator.prompts == [] and await user_texts(store) == []


async def test_a_nul_the_model_writes_is_stored_as_a_replacement_character(store: Store, checkpoints: Path) -> None:
    reply = await ask(build(store, FakeGenerator(" Zero\x00byte"), checkpoints))
    assert reply.sent == []
    assert [m.text for m in await store.recent_history(KEY)] == ["What is 2+2?", "Zero\ufffdbyte"]


# ------------------------------------------------------------------------------------------- other failures


async def test_a_failure_before_anything_was_stored_does_not_claim_the_message_is_saved(
    store: Store, checkpoints: Path
) -> None:
    generator = FakeGenerator()
    generator.fail_with = RuntimeError("boom")
    manager = build(store, generator, checkpoints)
    assert (await ask(manager)).sent == [FAILED_SAVED]  # stored first, so this one is true
    translated = await ask(manager, replace(MSG, command="translate", text="German Hello", message_id="t"))
    assert translated.sent == [FAILED]  # a translation stores nothing: no claim


async def test_the_terminal_chat_is_told_where_the_log_is(store: Store, checkpoints: Path) -> None:
    generator = FakeGenerator()
    generator.fail_with = RuntimeError("boom")
    manager = build(store, generator, checkpoints, failure_note="Details are in data/scratchbot.log.")
    assert (await ask(manager)).sent == [f"{FAILED_SAVED} Details are in data/scratchbot.log."]


def test_the_read_only_helper_really_makes_the_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with read_only(path), pytest.raises(PermissionError):
        path.open("a")
    assert os.access(path, os.W_OK)
