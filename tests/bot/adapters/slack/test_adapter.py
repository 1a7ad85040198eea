"""The Slack adapter end to end in Socket Mode: the real Bolt app and slack_sdk clients against a fake Slack.

Each test drives the fake the way Slack would (envelopes over the WebSocket) and reads what a user would see (the
messages posted and edited) and what the database keeps."""

from __future__ import annotations

import asyncio

from bot.adapters.slack.adapter import SlackAdapter
from storage.records import ConversationKey, Role, dm_channel
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import ANSWER, TOKENIZER, record_deliveries, running, socket_config
from tests.fake_slack.payloads import TS, direct_message, event_callback, mention, slash_command
from tests.fake_slack.server import eventually

# The shared fixtures, taken by assignment so each test names them as parameters (`checkpoints` is tests/bot's).
fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager


async def test_a_mention_gets_a_threaded_streamed_reply(fake_slack, manager, generator, store) -> None:
    generator.delay_s = 0.05
    async with running(manager, socket_config(fake_slack)):
        envelope = await fake_slack.send("events_api", event_callback(mention("What is 2+2?", TS)))
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
    assert fake_slack.ack_latency(envelope) is not None
    posts = fake_slack.called("chat.postMessage")
    assert [p.args["text"] for p in posts] == ["…"]  # the placeholder; the text arrives by edits
    assert posts[0].args["thread_ts"] == TS
    updates = [c.args["text"] for c in fake_slack.called("chat.update")]
    assert len(updates) >= 2 and updates[0].endswith(" …") and updates[-1] == ANSWER
    history = await store.recent_history(ConversationKey("slack", "T1", "C1", TS))
    assert [(m.role, m.text) for m in history] == [(Role.USER, "What is 2+2?"), (Role.ASSISTANT, ANSWER)]


async def test_a_follow_up_in_the_thread_continues_the_conversation(fake_slack, manager, generator) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("What is 2+2?", TS)))
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the first answer")
        await fake_slack.send("events_api", event_callback(mention("And 3+3?", "1700000101.000100", thread_ts=TS)))
        await eventually(lambda: len(fake_slack.thread("C1", TS)) == 2, what="the second answer")
    assert "### Instruction:\nWhat is 2+2?" in TOKENIZER.decode(generator.prompts[1])


async def test_a_direct_message_is_answered_in_the_dm_and_filed_under_the_workspace(fake_slack, manager, store) -> None:
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(direct_message("hello there", TS, user="U7")))
        await eventually(lambda: fake_slack.thread("D1", None) == [ANSWER], what="the DM answer")
    history = await store.recent_history(ConversationKey("slack", "T1", dm_channel("U7")))
    assert [m.text for m in history] == ["hello there", ANSWER]


async def test_bot_messages_and_edits_are_ignored(fake_slack, manager, generator) -> None:
    async with running(manager, socket_config(fake_slack)):
        ignored = [
            direct_message("from another bot", "1700000001.000001", bot_id="B2"),
            direct_message("bot message", "1700000002.000001", subtype="bot_message"),
            direct_message("edited", "1700000003.000001", subtype="message_changed"),
            {**mention("a bot mentions us", "1700000004.000001"), "bot_id": "B2"},
            {
                "type": "message",
                "channel": "C1",
                "user": "U1",
                "text": "chatter",
                "ts": "1700000005.000001",
                "channel_type": "channel",
            },
        ]
        envelopes = [await fake_slack.send("events_api", event_callback(event)) for event in ignored]
        await eventually(lambda: all(e in fake_slack.acks for e in envelopes), what="acks")
        await fake_slack.send("events_api", event_callback(direct_message("real question", TS)))
        await eventually(lambda: fake_slack.thread("D1", None) == [ANSWER], what="the real answer")
    assert len(generator.prompts) == 1 and len(fake_slack.called("chat.postMessage")) == 1


async def test_slash_commands_are_acknowledged_at_once_while_the_model_is_busy(fake_slack, manager, generator):
    generator.hold, generator.delay_s = asyncio.Event(), 0.01
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("a long question", TS)))
        await eventually(lambda: fake_slack.called("chat.postMessage"), what="the first answer to start")
        command = slash_command("/translate", "German Good morning", fake_slack.response_url())
        envelope = await fake_slack.send("slash_commands", command)
        await eventually(lambda: envelope in fake_slack.acks, timeout_s=3.0, what="the command's ack")
        assert not generator.hold.is_set()  # acknowledged while both answers wait for the model
        generator.hold.set()
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the translation")
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the mention's answer")
    assert fake_slack.ack_latency(envelope) < 3.0
    assert fake_slack.ack_payloads[envelope] in (None, {})  # an empty ack: the answer follows separately


async def test_a_redelivered_event_is_answered_once_and_a_lone_retry_is_answered(fake_slack, manager, generator):
    first = event_callback(mention("What is 2+2?", TS), event_id="Ev-dup")
    deliveries = record_deliveries(manager)
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", first)
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
        again = await fake_slack.send("events_api", first, retry_attempt=1)
        await eventually(lambda: again in fake_slack.acks, what="the retry's ack")
        await eventually(lambda: len(deliveries) == 2, what="the retry checked")
        # The first delivery of this one was lost: its retry is all we get, and it must be answered.
        lone_ts = "1700000200.000100"
        await fake_slack.send(
            "events_api", event_callback(mention("Lost?", lone_ts), event_id="Ev-lone"), retry_attempt=2
        )
        await eventually(lambda: fake_slack.thread("C1", lone_ts) == [ANSWER], what="the lone retry")
        await eventually(lambda: len(deliveries) == 3, what="the lone retry checked")
    assert deliveries == [("Ev-dup", True), ("Ev-dup", False), ("Ev-lone", True)]
    assert fake_slack.thread("C1", TS) == [ANSWER] and len(generator.prompts) == 2


async def test_a_disconnect_mid_answer_reconnects_and_the_answer_arrives_once(fake_slack, manager, generator):
    generator.hold, generator.delay_s = asyncio.Event(), 0.01
    event = event_callback(mention("What is 2+2?", TS))
    deliveries = record_deliveries(manager)
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event)
        await eventually(lambda: fake_slack.called("chat.postMessage"), what="the placeholder")
        await fake_slack.disconnect()
        await eventually(lambda: len(fake_slack.sockets) == 2 and fake_slack.connected == 1, what="a reconnect")
        assert len(fake_slack.called("apps.connections.open")) == 2
        assert all(c.token.startswith("xapp-") for c in fake_slack.called("apps.connections.open"))
        # Slack may redeliver on the new connection an event whose ack it did not see.
        again = await fake_slack.send("events_api", event, retry_attempt=1)
        await eventually(lambda: again in fake_slack.acks, what="the redelivery's ack on the new connection")
        await eventually(lambda: len(deliveries) == 2, what="the redelivery checked")
        generator.hold.set()
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
    assert deliveries == [(event["event_id"], True), (event["event_id"], False)]
    assert len(fake_slack.called("chat.postMessage")) == 1 and len(generator.prompts) == 1


async def test_a_429_on_chat_update_is_honoured_and_the_final_text_arrives(fake_slack, manager, generator):
    generator.answer = " " + " ".join(f"word{i}" for i in range(60))
    generator.delay_s = 0.03
    fake_slack.rate_limit["chat.update"] = [1]
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("count", TS)))
        await eventually(lambda: fake_slack.thread("C1", TS) == [generator.answer.strip()], what="the final text")
    updates = fake_slack.called("chat.update")
    limited = updates[0]  # the first edit got the 429
    assert updates[1].at - limited.at >= 0.95  # Retry-After: 1 was waited out (whole seconds, clock granularity)
    assert updates[-1].args["text"] == generator.answer.strip()


async def test_broadcasts_and_mentions_in_model_output_notify_nobody(fake_slack, manager, generator):
    generator.answer = " Hey <!channel>, <!here> and <!everyone>: ask <@U2> & <#C9|general>."
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("say something", TS)))
        await eventually(lambda: any(t.endswith("&gt;.") for t in fake_slack.thread("C1", TS)), what="the text")
    shown = fake_slack.thread("C1", TS)[0]
    assert shown == (
        "Hey &lt;!channel&gt;, &lt;!here&gt; and &lt;!everyone&gt;: ask &lt;@U2&gt; &amp; &lt;#C9|general&gt;."
    )
    for call in fake_slack.called("chat.update") + fake_slack.called("chat.postMessage"):
        assert "<" not in call.args["text"] and call.args["parse"] == "none"


async def test_an_8000_character_answer_arrives_complete_and_in_order(fake_slack, manager, generator):
    generator.answer = " " + " ".join(f"w{i:04d}" for i in range(1334))  # 8,003 characters
    assert len(generator.answer.strip()) > 8_000
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("a lot", TS)))
        await eventually(
            lambda: " ".join(fake_slack.thread("C1", TS)) == generator.answer.strip(), what="the whole answer"
        )
    shown = fake_slack.thread("C1", TS)
    assert len(shown) == 3 and all(len(text) <= 3_800 for text in shown)


async def test_a_429_on_the_placeholder_is_waited_out_and_the_answer_still_arrives(fake_slack, manager, generator):
    # Two mentions in one channel at once can exceed chat.postMessage's one-per-second; a 429 there posted nothing.
    fake_slack.rate_limit["chat.postMessage"] = [1]
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("busy channel", TS)))
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
    posts = fake_slack.called("chat.postMessage")
    assert len(posts) == 2 and posts[1].at - posts[0].at >= 0.95  # Retry-After: 1, then the placeholder landed


async def test_a_redelivered_mention_carrying_a_command_is_answered_once(fake_slack, manager) -> None:
    # The core files chat messages by their ts and drops a repeat itself; commands are stored nowhere, so only
    # the event id tells that "@bot /model" was delivered before.
    event = event_callback(mention("/model", TS), event_id="Ev-command")
    deliveries = record_deliveries(manager)
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event)
        await eventually(lambda: len(fake_slack.thread("C1", TS)) == 1, what="the model's description")
        again = await fake_slack.send("events_api", event, retry_attempt=1)
        await eventually(lambda: again in fake_slack.acks, what="the retry's ack")
        await eventually(lambda: len(deliveries) == 2, what="the retry checked")
    assert deliveries == [("Ev-command", True), ("Ev-command", False)]
    assert len(fake_slack.thread("C1", TS)) == 1 and fake_slack.thread("C1", TS)[0].startswith("Model:")


async def test_closing_during_start_up_leaves_no_connection_open(fake_slack, manager) -> None:
    """A signal can arrive while the adapter is still connecting: whenever close() comes, run() ends and no Socket
    Mode connection stays open behind it."""
    stages = [
        lambda: True,  # at once: still checking the token
        lambda: any(c.method == "auth.test" for c in fake_slack.calls),
        lambda: any(c.method == "apps.connections.open" for c in fake_slack.calls),
    ]
    fake_slack.handshake_delay_s = 0.5  # the last stage closes while the WebSocket handshake is under way
    for stage in stages:
        fake_slack.calls.clear()
        adapter = SlackAdapter(manager, socket_config(fake_slack))
        task = asyncio.create_task(adapter.run())
        await eventually(stage, what="the start-up stage")
        await asyncio.wait_for(adapter.close(), 15)
        await asyncio.wait_for(task, 15)
        await eventually(lambda: all(ws.closed for ws in fake_slack.sockets), what="every connection to close")
