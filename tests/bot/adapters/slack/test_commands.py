"""Slack commands, shortcuts and workspace events end to end (Socket Mode, fake Slack): who sees which answer, what
admins may do, and what Slack's deletions and uninstalls remove from the database."""

from __future__ import annotations

import pytest

from bot.core.admin import NOT_ADMIN
from bot.core.user_commands import forgotten
from storage.records import ConversationKey, dm_channel
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import ADMIN, ANSWER, SUMMARIZE_DEFAULT, TOKENIZER, running, socket_config
from tests.fake_slack.payloads import (
    TS,
    channel_deleted,
    direct_message,
    event_callback,
    group_deleted,
    mention,
    message_deleted,
    message_shortcut,
    slash_command,
)
from tests.fake_slack.server import eventually, eventually_async

fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager


async def stored_counts(store, keys: list[ConversationKey]) -> list[int]:
    return [len(await store.recent_history(key)) for key in keys]


def ephemeral_texts(slack) -> list[str]:
    return [e["text"] for e in slack.ephemeral]


async def test_reload_is_refused_and_audited_for_a_non_admin_and_allowed_for_a_configured_team_user(
    fake_slack, manager, store
) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/reload", "next.safetensors", fake_slack.response_url()))
        await eventually(lambda: ephemeral_texts(fake_slack) == [NOT_ADMIN], what="the refusal")
        # The same user id in another workspace is someone else: admin ids are TEAM:USER.
        await fake_slack.send(
            "slash_commands",
            slash_command("/reload", "next.safetensors", fake_slack.response_url(), user=ADMIN, team="T-other"),
        )
        await eventually(lambda: len(fake_slack.ephemeral) == 2, what="the second refusal")
        await fake_slack.send(
            "slash_commands", slash_command("/reload", "next.safetensors", fake_slack.response_url(), user=ADMIN)
        )
        await eventually(
            lambda: any(t.startswith("Now serving next.safetensors") for t in ephemeral_texts(fake_slack)),
            what="the reload",
        )
    assert all(e["response_type"] == "ephemeral" for e in fake_slack.ephemeral)
    assert fake_slack.ephemeral[1]["text"] == NOT_ADMIN
    refused = [a for a in await store.audit_entries(platform="slack") if a.action == "checkpoint.reload"]
    assert [(a.tenant, a.actor_id, a.detail.get("ok")) for a in reversed(refused)] == [
        ("T1", "U1", False),
        ("T-other", ADMIN, False),
        ("T1", ADMIN, True),
    ]
    assert not fake_slack.called("chat.postMessage")  # nothing of it in the channel


async def test_model_is_ephemeral_and_forget_removes_the_users_dm_whole(fake_slack, manager, store) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(direct_message("my secret", TS)))
        dm = ConversationKey("slack", "T1", dm_channel("U1"))
        await eventually_async(lambda: stored_counts(store, [dm]), [2], what="the DM stored")
        await fake_slack.send("slash_commands", slash_command("/model", "", fake_slack.response_url()))
        await eventually(lambda: len(fake_slack.ephemeral) == 1, what="/model")
        await fake_slack.send("slash_commands", slash_command("/forget", "", fake_slack.response_url()))
        await eventually(lambda: len(fake_slack.ephemeral) == 2, what="/forget")
    assert fake_slack.ephemeral[0]["text"].startswith("Model: fake.safetensors")
    assert fake_slack.ephemeral[1]["text"] == forgotten(2)  # the bot's reply too
    assert await store.recent_history(dm) == []


async def test_summarize_reads_the_channel_and_answers_in_it(fake_slack, manager, generator) -> None:
    fake_slack.history["C1"] = [
        {"type": "message", "user": "U1", "text": "shall we ship on Friday?", "ts": "1700000001.000001"},
        {"type": "message", "user": "U2", "text": "yes, after the &lt;review&gt;", "ts": "1700000002.000001"},
        {"type": "message", "subtype": "channel_join", "user": "U3", "text": "joined", "ts": "1700000003.000001"},
    ]
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/summarize", "10", fake_slack.response_url()))
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the summary in the channel")
    assert fake_slack.called("conversations.history")[0].args["limit"] == "10"
    prompt = TOKENIZER.decode(generator.prompts[0])
    assert "U1: shall we ship on Friday?\nU2: yes, after the <review>\n" in prompt and "joined" not in prompt


async def test_summarize_where_the_bot_cannot_read_tells_the_user_alone(fake_slack, manager, generator) -> None:
    fake_slack.errors["conversations.history"] = "not_in_channel"
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/summarize", "", fake_slack.response_url()))
        await eventually(lambda: fake_slack.ephemeral, what="the explanation")
    assert "invite me" in fake_slack.ephemeral[0]["text"] and not generator.prompts
    assert not fake_slack.called("chat.postMessage")


async def test_translate_posts_in_the_channel_and_usage_stays_private(fake_slack, manager, generator) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/translate", "German", fake_slack.response_url()))
        await eventually(lambda: fake_slack.ephemeral, what="the usage note")
        await fake_slack.send(
            "slash_commands", slash_command("/translate", "German Good morning & hi", fake_slack.response_url())
        )
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the translation")
    assert fake_slack.ephemeral[0]["text"].startswith("Usage: translate")
    assert "Translate the following text into German." in TOKENIZER.decode(generator.prompts[0])
    assert "Good morning & hi" in TOKENIZER.decode(generator.prompts[0])


async def test_translate_where_the_bot_may_not_post_answers_the_user_alone(fake_slack, manager, generator) -> None:
    generator.answer = " <!here> " + ANSWER  # the private answer is escaped too: nothing the model says notifies
    fake_slack.errors["chat.postMessage"] = "not_in_channel"
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/translate", "German Hi", fake_slack.response_url()))
        await eventually(lambda: fake_slack.ephemeral, what="the private answer")
    assert ephemeral_texts(fake_slack) == ["&lt;!here&gt; " + ANSWER]


async def test_message_shortcuts_answer_in_the_thread_of_the_message(fake_slack, manager, generator) -> None:
    root = {"user": "U2", "text": "Guten Morgen", "ts": "1700000050.000001"}
    fake_slack.history["C1"] = [
        {"type": "message", **root, "thread_ts": root["ts"]},
        {
            "type": "message",
            "user": "U1",
            "text": "what does that mean?",
            "ts": "1700000051.000001",
            "thread_ts": root["ts"],
        },
        {"type": "message", "user": "U9", "text": "elsewhere", "ts": "1700000052.000001"},
    ]
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("interactive", message_shortcut("translate_message", root, fake_slack.response_url()))
        await eventually(lambda: fake_slack.thread("C1", root["ts"]) == [ANSWER], what="the translation")
        await fake_slack.send("interactive", message_shortcut("summarize_thread", root, fake_slack.response_url()))
        await eventually(lambda: fake_slack.thread("C1", root["ts"]) == [ANSWER, ANSWER], what="the summary")
    translate, summarize = (TOKENIZER.decode(p) for p in generator.prompts)
    assert "Translate the following text into English." in translate and "Guten Morgen" in translate
    assert "U2: Guten Morgen\nU1: what does that mean?" in summarize and "elsewhere" not in summarize
    assert fake_slack.called("conversations.replies")[0].args["ts"] == root["ts"]


@pytest.mark.parametrize(
    "event",
    [{"type": "app_uninstalled"}, {"type": "tokens_revoked", "tokens": {"oauth": [], "bot": ["UBOT"]}}],
    ids=["app_uninstalled", "tokens_revoked"],
)
async def test_uninstall_purges_the_workspace_dms_included(fake_slack, manager, store, event) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("in a channel", TS)))
        await fake_slack.send("events_api", event_callback(direct_message("in a DM", "1700000101.000001")))
        await fake_slack.send("events_api", event_callback(mention("elsewhere", TS, channel="C5"), team="T2"))
        gone = [ConversationKey("slack", "T1", "C1", TS), ConversationKey("slack", "T1", dm_channel("U1"))]
        await eventually_async(lambda: stored_counts(store, gone), [2, 2], what="both answers stored")
        await fake_slack.send("events_api", event_callback(event))
        await eventually_async(lambda: stored_counts(store, gone), [0, 0], what="the purge")
    assert len(await store.recent_history(ConversationKey("slack", "T2", "C5", TS))) == 2
    purge = [a for a in await store.audit_entries(platform="slack") if a.action == "tenant.purge"]
    assert [(a.tenant, a.detail["reason"], a.detail["messages_deleted"]) for a in purge] == [("T1", event["type"], 4)]


async def test_a_user_token_revocation_leaves_the_workspace_alone(fake_slack, manager, store) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("hello", TS)))
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
        envelope = await fake_slack.send(
            "events_api", event_callback({"type": "tokens_revoked", "tokens": {"oauth": ["U1"], "bot": []}})
        )
        await eventually(lambda: envelope in fake_slack.acks, what="the ack")
    assert len(await store.recent_history(ConversationKey("slack", "T1", "C1", TS))) == 2


async def test_deleting_a_message_on_slack_deletes_our_copy(fake_slack, manager, store) -> None:
    thread = ConversationKey("slack", "T1", "C1", TS)
    dm = ConversationKey("slack", "T1", dm_channel("U1"))
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("oops, my password", TS)))
        await fake_slack.send("events_api", event_callback(direct_message("dm oops", "1700000101.000001")))
        await eventually_async(lambda: stored_counts(store, [thread, dm]), [2, 2], what="both answers stored")
        await fake_slack.send("events_api", event_callback(message_deleted("C1", TS)))
        await fake_slack.send(
            "events_api", event_callback(message_deleted("D1", "1700000101.000001", channel_type="im"))
        )
        await eventually_async(lambda: stored_counts(store, [thread, dm]), [1, 1], what="the deletions")
    assert [m.text for m in await store.recent_history(thread)] == [ANSWER]
    assert [m.text for m in await store.recent_history(dm)] == [ANSWER]


async def test_deleting_a_channel_on_slack_deletes_its_conversations_and_settings(fake_slack, manager, store):
    public, private, kept = (ConversationKey("slack", "T1", channel, TS) for channel in ("C1", "G1", "C2"))
    for channel in ("C1", "G1", "C2"):
        await store.update_channel_settings(
            platform="slack", tenant="T1", channel=channel, changes={"temperature": 0.7}, updated_by=ADMIN
        )
    async with running(manager, socket_config(fake_slack)):
        for key in (public, private, kept):
            await fake_slack.send("events_api", event_callback(mention("hello", TS, channel=key.channel)))
        await eventually_async(lambda: stored_counts(store, [public, private, kept]), [2, 2, 2], what="answers")
        await fake_slack.send("events_api", event_callback(channel_deleted("C1")))
        await fake_slack.send("events_api", event_callback(group_deleted("G1")))
        await eventually_async(lambda: stored_counts(store, [public, private, kept]), [0, 0, 2], what="the purges")
    settings = [await store.get_channel_settings(platform="slack", tenant="T1", channel=c) for c in ("C1", "G1", "C2")]
    assert settings == [{}, {}, {"temperature": 0.7}]
    purges = [a for a in await store.audit_entries(platform="slack") if a.action == "channel.purge"]
    assert sorted((a.target, a.detail["reason"]) for a in purges) == [
        ("C1", "channel_deleted"),
        ("G1", "group_deleted"),
    ]


async def test_summarize_without_a_count_reads_the_services_default_however_large(fake_slack, manager) -> None:
    fake_slack.history["C1"] = [
        {"type": "message", "user": "U1", "text": f"message number {i}", "ts": f"17000{i:05d}.000001"}
        for i in range(SUMMARIZE_DEFAULT + 20)
    ]
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/summarize", "", fake_slack.response_url()))
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the summary")
    assert sum(int(call.args["limit"]) for call in fake_slack.called("conversations.history")) == SUMMARIZE_DEFAULT
