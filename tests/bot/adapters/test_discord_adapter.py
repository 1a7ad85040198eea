"""The Discord adapter end to end: the real discord.py client against a fake Discord (tests/fake_discord).

Messages: who gets an answer, how it streams (one reply, edited at most once per interval, split at 2,000
characters, never pinging), 429s, a gateway that drops mid-answer, and deletions reaching storage.
Slash commands and context menus are in test_discord_commands.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging

import pytest

from bot.adapters.discord import MESSAGE_LIMIT, RESTARTING, DiscordConfig
from bot.adapters.redaction import REDACTED
from bot.core.conversation import ConversationManager
from storage.records import ConversationKey, Role, dm_tenant
from tests.bot.adapters.discord_fixtures import (  # noqa: F401  (fixtures, registered under short names)
    EDIT_INTERVAL_S,
    TOKEN,
    Bot,
    application_fixture,
    bot_fixture,
    checkpoints_fixture,
    generator_fixture,
    manager_fixture,
    poll,
    wait_until,
)
from tests.fake_discord import payloads as p

GUILD_CHANNEL = ConversationKey("discord", p.GUILD_ID, p.CHANNEL_ID)
THREAD = ConversationKey("discord", p.GUILD_ID, p.CHANNEL_ID, p.THREAD_ID)
SENDS = r"/channels/\d+/messages(/\d+)?"


async def test_a_mention_gets_one_reply_edited_as_text_streams_at_most_once_per_interval(bot: Bot) -> None:
    answer = " ".join(f"word{i}" for i in range(60))
    bot.generator.answer, bot.generator.delay_s = " " + answer, 0.02  # about 1.2 s of streaming
    question = await bot.mention("Tell me sixty words")
    [reply] = await bot.answered(question, answer)

    assert reply.payload["message_reference"]["channel_id"] == int(p.CHANNEL_ID)
    assert reply.contents[0].endswith("…") and reply.content == answer  # a cursor while streaming, then none
    edits = bot.discord.calls_to("PATCH", rf"/channels/{p.CHANNEL_ID}/messages/{reply.id}")
    assert 2 <= len(edits) < 60  # streamed, but not once per word
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
    assert min(gaps) >= EDIT_INTERVAL_S * 0.95  # throttled (the server sees them no closer than the client sent)
    typing = bot.discord.calls_to("POST", rf"/channels/{p.CHANNEL_ID}/typing")
    first_post = bot.discord.calls_to("POST", rf"/channels/{p.CHANNEL_ID}/messages")[0]
    assert typing and typing[0].at <= first_post.at  # the indicator shows while the model works
    stored = await bot.history_becomes(GUILD_CHANNEL, ["Tell me sixty words", answer])
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT] and stored[0].platform_message_id == question["id"]


async def test_a_dm_is_answered_without_a_mention_and_filed_under_the_user(bot: Bot) -> None:
    question = p.message(p.DM_CHANNEL_ID, p.ALICE, "Hello in private", guild_id=None)
    await bot.discord.dispatch("MESSAGE_CREATE", question)
    [reply] = await bot.answered(question, "The answer is 4.")
    assert reply.channel_id == p.DM_CHANNEL_ID
    dm = ConversationKey("discord", dm_tenant(p.USER_ID), p.DM_CHANNEL_ID)
    await bot.history_becomes(dm, ["Hello in private", "The answer is 4."])


async def test_messages_not_addressed_to_the_bot_and_bots_messages_get_nothing(bot: Bot) -> None:
    chatter = p.message(p.CHANNEL_ID, p.ALICE, "just chatting, no mention")
    other_bot = p.message(p.CHANNEL_ID, p.OTHER_BOT, f"<@{p.APP_ID}> hello bot", mentions=[p.BOT])
    ourselves = p.message(p.CHANNEL_ID, p.BOT, f"<@{p.APP_ID}> talking to myself", mentions=[p.BOT])
    for message in (chatter, other_bot, ourselves):
        await bot.discord.dispatch("MESSAGE_CREATE", message)
    marker = await bot.mention("and this one is for you")  # handled after the others: when it is answered...
    await bot.answered(marker, "The answer is 4.")
    for message in (chatter, other_bot, ourselves):  # ...they have long been dropped
        assert bot.discord.replies_to(message["id"]) == []
    assert len(bot.generator.prompts) == 1


async def test_a_thread_is_a_conversation_of_its_own(bot: Bot) -> None:
    question = await bot.mention("In a thread", channel=p.THREAD_ID)
    await bot.answered(question, "The answer is 4.")
    await bot.history_becomes(THREAD, ["In a thread", "The answer is 4."])
    assert await bot.store.recent_history(GUILD_CHANNEL) == []


async def test_a_thread_the_client_never_cached_is_filed_under_its_parent_and_its_deletions_found(bot: Bot) -> None:
    question = await bot.mention("In an old thread", channel=p.UNCACHED_THREAD_ID)
    await bot.answered(question, "The answer is 4.")
    old_thread = ConversationKey("discord", p.GUILD_ID, p.CHANNEL_ID, p.UNCACHED_THREAD_ID)
    await bot.history_becomes(old_thread, ["In an old thread", "The answer is 4."])
    deleted = {"id": question["id"], "channel_id": p.UNCACHED_THREAD_ID, "guild_id": p.GUILD_ID}
    await bot.discord.dispatch("MESSAGE_DELETE", deleted)
    await bot.history_becomes(old_thread, ["The answer is 4."])


async def test_a_long_answer_arrives_as_ordered_chunks_with_balanced_code_fences(bot: Bot) -> None:
    prose = "This sentence explains a step of the program in some detail. " * 25
    code = "```python\n" + "".join(f"value_{i} = compute({i})  # step {i}\n" for i in range(60)) + "```"
    answer = f"{prose.strip()}\n\n{code}\n\n{prose.strip()}\n\nThe end."
    assert len(answer) > 4500
    bot.generator.answer = " " + answer
    question = await bot.mention("Explain with code")
    await wait_until(lambda: "The end." in "".join(m.content for m in bot.chain(question["id"])), "the last chunk")
    await wait_until(lambda: not bot.chain(question["id"])[-1].content.endswith("…"), "the final edit")

    chunks = [m.content for m in bot.chain(question["id"])]  # each replies to the one before: their order
    assert len(chunks) >= 3
    assert all(len(c) <= MESSAGE_LIMIT for c in chunks)
    assert all(sum(line.startswith("```") for line in c.split("\n")) % 2 == 0 for c in chunks)
    assert _without_fences("\n".join(chunks)) == _without_fences(answer)


async def test_mentions_in_the_answer_are_shown_but_never_ping(bot: Bot) -> None:
    answer = f"Attention @everyone and @here, <@&{p.ROLE_ID}> and <@{p.USER_ID}>!"
    bot.generator.answer = " " + answer
    question = await bot.mention("Shout")
    await bot.answered(question, answer)
    sent = bot.discord.calls_to("POST", SENDS) + bot.discord.calls_to("PATCH", SENDS)
    assert sent and all(call.json["allowed_mentions"] == {"parse": []} for call in sent)
    assert all("replied_user" not in call.json["allowed_mentions"] for call in sent)  # no ping of the asker


async def test_a_429_on_an_edit_is_waited_out_and_the_final_text_arrives_once(bot: Bot) -> None:
    answer = " ".join(f"token{i}" for i in range(30))
    bot.generator.answer, bot.generator.delay_s = " " + answer, 0.03
    bot.discord.rate_limit_once("PATCH", rf"/channels/{p.CHANNEL_ID}/messages/\d+", retry_after=0.6)
    question = await bot.mention("Stream while rate limited")
    [reply] = await bot.answered(question, answer)

    edits = bot.discord.calls_to("PATCH", rf"/channels/{p.CHANNEL_ID}/messages/{reply.id}")
    limited = [i for i, call in enumerate(edits) if call.status == 429]
    assert len(limited) == 1
    retry = edits[limited[0] + 1]
    assert retry.at - edits[limited[0]].at >= 0.6 * 0.95 and retry.json == edits[limited[0]].json
    assert [c.json["content"] for c in edits if c.status == 200].count(answer) == 1
    assert len(bot.discord.calls_to("POST", rf"/channels/{p.CHANNEL_ID}/messages")) == 1


async def test_the_gateway_dropping_mid_answer_resumes_and_the_answer_arrives_exactly_once(bot: Bot) -> None:
    answer = " ".join(f"part{i}" for i in range(20))
    bot.generator.answer, bot.generator.delay_s = " " + answer, 0.01
    bot.generator.hold = asyncio.Event()
    first = await bot.mention("A long question")
    await wait_until(lambda: bot.chain(first["id"]), "the answer to start")

    await bot.discord.drop_connection()
    second = await bot.mention("Asked while the bot was disconnected", author=p.OWNER)  # replayed on RESUME
    await wait_until(lambda: bot.discord.resumes and bot.discord.connected, "the client to resume")
    bot.generator.hold.set()
    await bot.answered(first, answer)
    await bot.answered(second, answer)

    await bot.discord.dispatch("MESSAGE_CREATE", first)  # Discord redelivers the first question
    marker = await bot.mention("marker", author=p.ADMIN)
    await bot.answered(marker, answer)
    assert len(bot.discord.identifies) == 1 and len(bot.discord.resumes) == 1  # resumed, not a new session
    assert len(bot.discord.replies_to(first["id"])) == 1 and len(bot.chain(first["id"])) == 1
    assert len(bot.generator.prompts) == 3  # first, second, marker: the redelivery was not answered again
    stored = await bot.store.recent_history(GUILD_CHANNEL)
    assert [m.text for m in stored].count("A long question") == 1


async def test_deleted_messages_and_a_removed_guild_are_purged_from_storage(bot: Bot) -> None:
    before_restart = "1599999999999999999"  # stored by an earlier run: this client never saw the message
    await bot.store.add_message(
        GUILD_CHANNEL, role=Role.USER, author_id=p.USER_ID, text="old question", platform_message_id=before_restart
    )
    in_channel = await bot.mention("delete me")
    in_thread = await bot.mention("delete me too", channel=p.THREAD_ID)
    in_dm = p.message(p.DM_CHANNEL_ID, p.ALICE, "a private word", guild_id=None)
    await bot.discord.dispatch("MESSAGE_CREATE", in_dm)
    for question in (in_channel, in_thread, in_dm):
        await bot.answered(question, "The answer is 4.")
    dm = ConversationKey("discord", dm_tenant(p.USER_ID), p.DM_CHANNEL_ID)

    async def texts(key: ConversationKey) -> list[str]:
        return [m.text for m in await bot.store.recent_history(key)]

    old = p.message(p.CHANNEL_ID, p.ALICE, "", message_id=before_restart)
    for message in (old, in_channel, in_thread, in_dm):  # raw events: the ids, the channel, the guild if any
        deleted = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            deleted["guild_id"] = message["guild_id"]
        await bot.discord.dispatch("MESSAGE_DELETE", deleted)
    for key in (GUILD_CHANNEL, THREAD, dm):  # the question goes, the answer stays (it has no Discord id)
        await bot.history_becomes(key, ["The answer is 4."])

    await bot.discord.dispatch("GUILD_DELETE", {"id": p.GUILD_ID})
    purge = [("tenant.purge", p.GUILD_ID)]  # audited after the purge: once it is there, the purge is done
    await poll(
        lambda: bot.store.audit_entries(platform="discord"),
        lambda got: [(a.action, a.target) for a in got] == purge,
        "the purge's audit entry",
    )
    assert await texts(GUILD_CHANNEL) == [] and await texts(THREAD) == []
    assert await texts(dm) == ["The answer is 4."]  # a DM is not the guild's


async def test_a_bulk_deletion_purges_every_message_it_names_even_ones_never_seen(bot: Bot) -> None:
    before_restart = "1599999999999999999"  # stored by an earlier run: this client never saw the message
    await bot.store.add_message(
        GUILD_CHANNEL, role=Role.USER, author_id=p.USER_ID, text="old question", platform_message_id=before_restart
    )
    in_channel = await bot.mention("first of many")
    in_old_thread = await bot.mention("in an old thread", channel=p.UNCACHED_THREAD_ID)
    for question in (in_channel, in_old_thread):
        await bot.answered(question, "The answer is 4.")
    old_thread = ConversationKey("discord", p.GUILD_ID, p.CHANNEL_ID, p.UNCACHED_THREAD_ID)
    await bot.history_becomes(old_thread, ["in an old thread", "The answer is 4."])

    await bot.discord.delete_messages(p.CHANNEL_ID, [before_restart, in_channel["id"], p.snowflake()])
    await bot.discord.delete_messages(p.UNCACHED_THREAD_ID, [in_old_thread["id"]])  # a thread: filed under its parent
    await bot.history_becomes(GUILD_CHANNEL, ["The answer is 4."])
    await bot.history_becomes(old_thread, ["The answer is 4."])


async def test_a_deleted_channel_takes_its_threads_and_settings_along_and_nothing_else(
    bot: Bot, manager: ConversationManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_channel = ConversationKey("discord", p.GUILD_ID, p.OTHER_CHANNEL_ID)
    for key in (GUILD_CHANNEL, THREAD, other_channel):
        await bot.store.add_message(key, role=Role.USER, author_id=p.USER_ID, text=f"said in {key.channel}")
    where = {"platform": "discord", "tenant": p.GUILD_ID, "channel": p.CHANNEL_ID}
    await bot.store.update_channel_settings(**where, changes={"temperature": 0.7}, updated_by=p.ADMIN_ID)
    purges = []  # what the adapter asked the core to purge, as it asked
    purge = manager.channel_deleted

    async def recording(platform: str, tenant: str, channel: str, thread: str | None = None, *, reason: str) -> int:
        purges.append((channel, thread))
        return await purge(platform, tenant, channel, thread, reason=reason)

    monkeypatch.setattr(manager, "channel_deleted", recording)
    await bot.discord.delete_channel(p.text_channel(p.CHANNEL_ID))
    marker = "1300000000000000005"  # a thread of the other channel, deleted after: every earlier event has been seen
    await bot.discord.delete_thread(marker, parent_id=p.OTHER_CHANNEL_ID)
    audit = await poll(
        lambda: bot.store.audit_entries(platform="discord"), lambda got: len(got) == 2, "the purges' audit entries"
    )
    assert sorted((a.action, a.target) for a in audit) == [("channel.purge", p.CHANNEL_ID), ("thread.purge", marker)]
    # Asked once: discord.py also reports the channel's cached threads deleted, and the channel's purge took them.
    assert purges == [(p.CHANNEL_ID, None), (p.OTHER_CHANNEL_ID, marker)]
    assert await bot.store.recent_history(GUILD_CHANNEL) == [] and await bot.store.recent_history(THREAD) == []
    assert await bot.store.get_channel_settings(**where) == {}
    assert [m.text for m in await bot.store.recent_history(other_channel)] == [f"said in {p.OTHER_CHANNEL_ID}"]


async def test_a_deleted_thread_takes_only_its_own_conversation_cached_or_not(bot: Bot) -> None:
    old_thread = ConversationKey("discord", p.GUILD_ID, p.CHANNEL_ID, p.UNCACHED_THREAD_ID)
    for key in (GUILD_CHANNEL, THREAD, old_thread):
        await bot.store.add_message(key, role=Role.USER, author_id=p.USER_ID, text="still here?")
    await bot.discord.delete_thread(p.THREAD_ID)
    await bot.discord.delete_thread(p.UNCACHED_THREAD_ID)  # never announced by the gateway: the raw event still comes
    await poll(
        lambda: bot.store.audit_entries(platform="discord"),
        lambda got: (
            sorted((a.action, a.target, a.detail["channel"]) for a in got)
            == [("thread.purge", p.THREAD_ID, p.CHANNEL_ID), ("thread.purge", p.UNCACHED_THREAD_ID, p.CHANNEL_ID)]
        ),
        "both threads' purges",
    )
    assert await bot.store.recent_history(THREAD) == [] and await bot.store.recent_history(old_thread) == []
    assert [m.text for m in await bot.store.recent_history(GUILD_CHANNEL)] == ["still here?"]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # before the bot connects: discord.py logs its URLs and events at DEBUG
    return caplog


async def test_neither_the_bot_token_nor_an_interaction_token_reaches_the_logs(
    debug_logs: pytest.LogCaptureFixture, bot: Bot
) -> None:
    token = await bot.interact(p.slash("model"))
    await bot.command_answered(token, lambda answers: answers and answers[0].startswith("Model:"))
    question = await bot.mention("and a message")
    await bot.answered(question, "The answer is 4.")
    logging.getLogger("discord.gateway").debug("sent %s", {"op": 2, "d": {"token": TOKEN}})  # as a leak would

    # Everything logged in the bot's process, except the fake server's own access log (it is Discord's side).
    records = [r for phase in ("setup", "call") for r in debug_logs.get_records(phase) if r.name != "aiohttp.access"]
    text = "\n".join(r.getMessage() for r in records)
    [callback] = bot.discord.calls_to("POST", r"/interactions/.*")
    interaction_id = callback.path.split("/")[2]
    assert f"/interactions/{interaction_id}/{REDACTED}/callback" in text  # the URLs were logged, redacted
    assert f"/webhooks/{p.APP_ID}/{REDACTED}/messages/@original" in text
    assert f"'token': '{REDACTED}'" in text  # INTERACTION_CREATE as the gateway logged it, and the leak above
    assert TOKEN not in text and token not in text


def _without_fences(text: str) -> str:
    """The words of ``text`` without fence lines: splitting closes and reopens fences and moves whitespace."""
    return " ".join(" ".join(line for line in text.split("\n") if not line.startswith("```")).split())


async def test_the_bot_asks_only_for_unprivileged_intents_it_uses(bot: Bot) -> None:
    guilds, guild_messages, dm_messages = 1 << 0, 1 << 9, 1 << 12
    assert bot.discord.identifies[0]["intents"] == guilds | guild_messages | dm_messages  # no message content


async def test_close_lets_an_answer_in_progress_finish_and_takes_no_new_ones(bot: Bot) -> None:
    bot.generator.answer, bot.generator.delay_s = " Finished properly, every word of it.", 0.01
    bot.generator.hold = asyncio.Event()
    question = await bot.mention("Answer before you go")
    await wait_until(lambda: bot.chain(question["id"]), "the answer to start")
    closing = asyncio.create_task(bot.adapter.close())
    late = await bot.mention("too late")
    await wait_until(lambda: bot.discord.replies_to(late["id"]), "the late message to be told")
    assert not closing.done()
    bot.generator.hold.set()
    await asyncio.wait_for(closing, 20)
    await asyncio.wait_for(bot.task, 20)
    assert [m.content for m in bot.chain(question["id"])] == ["Finished properly, every word of it."]
    assert [m.content for m in bot.discord.replies_to(late["id"])] == [RESTARTING]  # told, not answered
    assert len(bot.generator.prompts) == 1


async def test_close_after_its_grace_cuts_an_answer_short_without_leaving_the_cursor(bot: Bot) -> None:
    bot.generator.answer, bot.generator.delay_s = " Half of this answer arrives before the bot stops.", 0.01
    bot.generator.hold = asyncio.Event()  # never set: the model is still busy when the grace runs out
    question = await bot.mention("Answer before you go")
    await wait_until(lambda: any(m.content.endswith("…") for m in bot.chain(question["id"])), "the answer to start")
    bot.adapter._config = dataclasses.replace(bot.adapter._config, close_grace_s=0.2)
    await asyncio.wait_for(bot.adapter.close(), 20)
    [reply] = bot.chain(question["id"])
    assert reply.content and not reply.content.endswith("…")  # what arrived, shown as it ended


def test_the_config_never_shows_its_token() -> None:
    config = DiscordConfig(token=TOKEN, api_url="https://discord.com/api/v10", rate_limit_max_wait_s=30)
    assert TOKEN not in repr(config) and TOKEN not in str(config)


async def test_answers_streaming_into_one_channel_share_its_five_writes_per_five_seconds(bot: Bot) -> None:
    answer = " ".join(f"word{i}" for i in range(30))
    bot.generator.answer, bot.generator.delay_s = " " + answer, 0.05  # each streams for about 1.5 s
    questions = [await bot.mention(f"Question {i}") for i in range(6)]
    for question in questions:
        await bot.answered(question, answer)
    writes = sorted(c.at for c in bot.discord.calls_to("POST", SENDS) + bot.discord.calls_to("PATCH", SENDS))
    assert len(writes) > 6  # six replies, and edits
    # Discord allows 5 per 5 s in a channel: any six writes span at least 5 s (less 0.3 s for the way to the fake).
    assert min(later - earlier for earlier, later in zip(writes, writes[5:], strict=False)) >= 4.7
