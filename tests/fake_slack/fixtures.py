"""Fixtures for the Slack adapter tests: a started fake Slack, a core over a throwaway database, and the real
adapter (Bolt app, slack_sdk clients) running against the fake in Socket Mode or HTTP mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.pacing import LateEdits, Pace
from bot.adapters.slack.adapter import SlackAdapter
from bot.adapters.slack.config import SlackConfig
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import ConversationManager, ManagerConfig
from bot.core.ratelimit import RateLimiter
from llm.tokenizer import Tokenizer
from storage.store import Store
from tests.bot.fakes import FakeGenerator
from tests.fake_slack.server import TEAM, FakeSlack

BOT_TOKEN = "xoxb-111-222-bottokensecret"
APP_TOKEN = "xapp-1-A1-333-apptokensecret"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ADMIN = "U-ADMIN"
# Slack's real pace (a write a second per channel) would make every streaming test take seconds; the pacing itself
# is tested at Slack's pace in test_rate_limits.py.
FAST = Pace(calls=50, per_s=1.0)
TOKENIZER = Tokenizer()
ANSWER = "The answer is 4."  # what the `generator` fixture's model says, as Slack shows it
DEFAULTS = ChannelConfig(max_new_tokens=100, temperature=0.0, top_k=None, top_p=None, history_messages=20)


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    slack = FakeSlack()
    await slack.start()
    try:
        yield slack
    finally:
        await slack.stop()


@pytest.fixture
def generator() -> FakeGenerator:
    return FakeGenerator(f" {ANSWER}")


SUMMARIZE_DEFAULT = 250  # above Slack's page of 200 messages: one default, honoured however many pages it takes


def make_manager(store: Store, generator: FakeGenerator, checkpoints: Path) -> ConversationManager:
    return ConversationManager(
        store,
        generator,
        TOKENIZER,
        AdminPolicy({"slack": [f"{TEAM}:{ADMIN}"]}),
        RateLimiter(100),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, request_timeout_s=30, summarize_default=SUMMARIZE_DEFAULT),
    )


@pytest.fixture
def manager(store: Store, generator: FakeGenerator, checkpoints: Path) -> ConversationManager:
    return make_manager(store, generator, checkpoints)


def record_deliveries(manager: ConversationManager) -> list[tuple[str, bool]]:
    """Each event id the adapter checks with the core, and whether it was the first delivery, in order. A test waits
    for a redelivery to be seen and dropped, rather than sleeping and hoping a wrong second answer would show."""
    seen: list[tuple[str, bool]] = []
    check = manager.first_delivery

    async def recording(platform: str, event_id: str) -> bool:
        first = await check(platform, event_id)
        seen.append((event_id, first))
        return first

    manager.first_delivery = recording  # type: ignore[method-assign]
    return seen


def socket_config(slack: FakeSlack, **changes: Any) -> SlackConfig:
    config = SlackConfig(
        bot_token=BOT_TOKEN,
        app_token=APP_TOKEN,
        api_url=slack.api_url,
        edit_interval_s=0.05,
        pace=FAST,
        ping_interval_s=2.0,
        close_grace_s=5.0,
    )
    return replace(config, **changes)


def http_config(slack: FakeSlack, **changes: Any) -> SlackConfig:
    config = SlackConfig(
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        mode="http",
        http_port=0,
        api_url=slack.api_url,
        edit_interval_s=0.05,
        pace=FAST,
        close_grace_s=5.0,
    )
    return replace(config, **changes)


@asynccontextmanager
async def running(
    manager: ConversationManager, config: SlackConfig, late_edits: LateEdits | None = None
) -> AsyncIterator[SlackAdapter]:
    """The adapter serving in a task, as `bot.app` runs it; closed (and its task finished) on the way out."""
    adapter = SlackAdapter(manager, config, late_edits)
    task = asyncio.create_task(adapter.run())
    ready = asyncio.create_task(adapter.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not adapter.ready.is_set():
        ready.cancel()
        task.cancel()
        if task.done() and task.exception():
            raise task.exception()  # type: ignore[misc]
        raise AssertionError("the Slack adapter did not get ready within 15 s")
    try:
        yield adapter
    finally:
        await asyncio.wait_for(adapter.close(), timeout=15)
        await asyncio.wait_for(task, timeout=15)
