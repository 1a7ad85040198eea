"""The Slack adapter end to end in HTTP mode: Bolt's aiohttp endpoint served beside other work on one loop, requests
signed as Slack signs them, retries with X-Slack-Retry-Num, captured commands and shortcuts replayed, two bot
processes sharing one database, and requests that must be refused without running anything or logging a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from storage.records import ConversationKey
from storage.store import open_store
from tests.bot.fakes import FakeGenerator
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import (
    ANSWER,
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    http_config,
    make_manager,
    record_deliveries,
    running,
    socket_config,
)
from tests.fake_slack.payloads import TS, event_callback, mention, message_shortcut, slash_command
from tests.fake_slack.server import eventually
from tests.fake_slack.signing import SignedPoster, sign

fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager


def poster(adapter) -> SignedPoster:
    return SignedPoster(f"http://127.0.0.1:{adapter.http_port}/slack/events", SIGNING_SECRET)


async def test_a_signed_mention_is_answered_and_its_retry_is_not(fake_slack, manager, generator) -> None:
    body = event_callback(mention("What is 2+2?", TS), event_id="Ev-http")
    deliveries = record_deliveries(manager)
    async with running(manager, http_config(fake_slack)) as adapter:
        assert await poster(adapter).event(body) == (200, "")
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
        assert (await poster(adapter).event(body, retry_num=1))[0] == 200
        await eventually(lambda: len(deliveries) == 2, what="the retry checked")
        # A retry whose first delivery never arrived is the only copy: it is answered.
        lone = event_callback(mention("Lost?", "1700000200.000100"), event_id="Ev-lone")
        assert (await poster(adapter).event(lone, retry_num=2))[0] == 200
        await eventually(lambda: fake_slack.thread("C1", "1700000200.000100") == [ANSWER], what="the lone retry")
        await eventually(lambda: len(deliveries) == 3, what="the lone retry checked")
    assert deliveries == [("Ev-http", True), ("Ev-http", False), ("Ev-lone", True)]
    assert fake_slack.thread("C1", TS) == [ANSWER] and len(generator.prompts) == 2


async def test_a_slash_command_over_http_is_acknowledged_at_once(fake_slack, manager, generator) -> None:
    generator.hold, generator.delay_s = asyncio.Event(), 0.01
    async with running(manager, http_config(fake_slack)) as adapter:
        command = slash_command("/translate", "French Hello", fake_slack.response_url())
        started = asyncio.get_running_loop().time()
        assert await poster(adapter).command(command) == (200, "")
        assert asyncio.get_running_loop().time() - started < 3.0  # while the answer still waits for the model
        generator.hold.set()
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the translation")


async def test_a_replayed_slash_command_is_answered_once_and_a_new_one_is_answered(fake_slack, manager, generator):
    first = slash_command("/translate", "French Hello", fake_slack.response_url(), trigger="1700000000.1.aaa")
    second = slash_command("/translate", "French Goodbye", fake_slack.response_url(), trigger="1700000000.2.bbb")
    deliveries = record_deliveries(manager)
    async with running(manager, http_config(fake_slack)) as adapter:
        signed_at = int(time.time())
        assert await poster(adapter).command(first, timestamp=signed_at) == (200, "")
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER], what="the translation")
        # The captured request, bytes and signature unchanged, within Slack's 5-minute window: Bolt accepts it.
        assert await poster(adapter).command(first, timestamp=signed_at) == (200, "")
        await eventually(lambda: len(deliveries) == 2, what="the replay checked")
        assert await poster(adapter).command(second, timestamp=signed_at) == (200, "")
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER, ANSWER], what="the second translation")
    assert deliveries == [
        ("trigger:1700000000.1.aaa", True), ("trigger:1700000000.1.aaa", False), ("trigger:1700000000.2.bbb", True),
    ]  # fmt: skip
    assert len(generator.prompts) == 2


@pytest.mark.parametrize("shortcut", ["translate_message", "summarize_thread"])
async def test_a_replayed_message_shortcut_is_answered_once(fake_slack, manager, generator, shortcut: str) -> None:
    fake_slack.history["C1"] = [{"type": "message", "user": "U2", "text": "Bonjour", "ts": TS}]
    used = message_shortcut(shortcut, {"user": "U2", "text": "Bonjour", "ts": TS}, fake_slack.response_url())
    deliveries = record_deliveries(manager)
    async with running(manager, http_config(fake_slack)) as adapter:
        signed_at = int(time.time())
        for _ in range(2):
            assert await poster(adapter).interactive(used, timestamp=signed_at) == (200, "")
        await eventually(lambda: len(deliveries) == 2, what="both deliveries checked")
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer in the thread")
    assert sorted(deliveries) == [(f"trigger:{used['trigger_id']}", False), (f"trigger:{used['trigger_id']}", True)]
    assert len(generator.prompts) == 1 and fake_slack.thread("C1", TS) == [ANSWER]


async def test_a_command_without_a_trigger_id_is_told_apart_by_its_signed_body(fake_slack, manager, generator):
    command = slash_command("/translate", "French Hello", fake_slack.response_url())
    del command["trigger_id"]
    deliveries = record_deliveries(manager)
    async with running(manager, http_config(fake_slack)) as adapter:
        signed_at = int(time.time())
        for n, at in enumerate((signed_at, signed_at, signed_at - 1), 1):  # a replay, then the same text signed anew
            assert await poster(adapter).command(command, timestamp=at) == (200, "")
            await eventually(lambda n=n: len(deliveries) == n, what=f"post {n} checked")
        await eventually(lambda: fake_slack.thread("C1", None) == [ANSWER, ANSWER], what="two answers")
    assert [first for _, first in deliveries] == [True, False, True]
    assert all(event_id.startswith("body:") for event_id, _ in deliveries)


async def test_two_processes_sharing_a_database_answer_a_duplicated_event_once(
    fake_slack, checkpoints: Path, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    async with open_store(url) as first_store, open_store(url) as second_store:
        first = make_manager(first_store, FakeGenerator(f" {ANSWER}"), checkpoints)
        second = make_manager(second_store, FakeGenerator(f" {ANSWER}"), checkpoints)
        seen_first, seen_second = record_deliveries(first), record_deliveries(second)
        async with running(first, http_config(fake_slack)) as a, running(second, http_config(fake_slack)) as b:
            body = event_callback(mention("What is 2+2?", TS), event_id="Ev-shared")
            # Slack retried because the first process looked slow; the load balancer sent the retry elsewhere.
            statuses = await asyncio.gather(poster(a).event(body), poster(b).event(body, retry_num=1))
            assert [s for s, _ in statuses] == [200, 200]
            await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="the answer")
            await eventually(lambda: len(seen_first) + len(seen_second) == 2, what="both deliveries checked")
        assert sorted(seen_first + seen_second) == [("Ev-shared", False), ("Ev-shared", True)]
        assert len(fake_slack.called("chat.postMessage")) == 1
        assert len(await first_store.recent_history(ConversationKey("slack", "T1", "C1", TS))) == 2


async def test_forged_stale_and_malformed_requests_are_refused_and_nothing_secret_is_logged(
    fake_slack, manager, generator, store, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(event_callback(mention("What is 2+2?", TS)))
    async with running(manager, http_config(fake_slack)) as adapter:
        post = poster(adapter)
        forged = await post.post(body, "application/json", signature=sign("not-the-secret", 0, body))
        stale = await post.post(body, "application/json", age_s=6 * 60)  # correctly signed, 6 minutes old
        malformed = await post.post('{"type": "event_callback", "event": ', "application/json")
        unsigned = await post.post(body, "application/json", signature="")
        assert [forged[0], stale[0], malformed[0], unsigned[0]] == [401, 401, 400, 401]
        await asyncio.sleep(0.3)
    assert generator.prompts == [] and fake_slack.messages == []
    assert await store.recent_history(ConversationKey("slack", "T1", "C1", TS)) == []
    assert "Invalid request signature" in caplog.text  # Bolt did log the rejections, body and all
    assert "legacy-verification-token" not in caplog.text  # the body's own credential was scrubbed
    for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET):
        assert secret not in caplog.text


async def test_a_whole_conversation_logged_at_debug_shows_no_token(fake_slack, manager, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("events_api", event_callback(mention("What is 2+2?", TS)))
        await fake_slack.send("slash_commands", slash_command("/model", "", fake_slack.response_url()))
        await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER] and fake_slack.ephemeral, what="answers")
    assert "Sending a request" in caplog.text and "apps.connections.open" in caplog.text  # the SDKs did log
    for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET):
        assert secret not in caplog.text
