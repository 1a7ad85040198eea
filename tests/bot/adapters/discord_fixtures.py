"""Fixtures for the Discord adapter's tests: a fake Discord, a core over SQLite, and the adapter connected to both.

Test modules import the `*_fixture` functions (registered under the short names) rather than a conftest.py, so
the Slack tests next door keep their own `manager` and `generator` to themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot.adapters.discord import DiscordAdapter, DiscordConfig
from bot.adapters.pacing import LateEdits
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import ConversationManager, ManagerConfig
from bot.core.ratelimit import RateLimiter
from llm.tokenizer import Tokenizer
from storage.records import ConversationKey, StoredMessage
from storage.store import Store
from tests.bot.fakes import FakeGenerator
from tests.fake_discord import FakeDiscord
from tests.fake_discord import payloads as p

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.fake-bot-token.x9Zq"  # shaped like a real token, so a leak is recognisable
EDIT_INTERVAL_S = 0.25
WAIT_S = 20.0  # generous: a loaded 2-core machine is slow, and every wait polls for its condition
DEFAULTS = ChannelConfig(max_new_tokens=100, temperature=0.0, top_k=None, top_p=None, history_messages=20)
_TOKENIZER = Tokenizer()
T = TypeVar("T")


async def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def poll(read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str, timeout: float = WAIT_S) -> T:
    """Like `wait_until`, for a condition that needs an await (reading the store); returns what it read last."""
    deadline = time.monotonic() + timeout
    while not ok(got := await read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last saw {got!r}")
        await asyncio.sleep(0.02)
    return got


@dataclass
class Bot:
    """What a test drives: the fake Discord, the core's pieces, and the running adapter."""

    discord: FakeDiscord
    adapter: DiscordAdapter
    generator: FakeGenerator
    store: Store
    task: asyncio.Task[None]

    async def mention(self, text: str, *, author: dict = p.ALICE, channel: str = p.CHANNEL_ID) -> dict:
        message = p.message(channel, author, f"<@{p.APP_ID}> {text}", mentions=[p.BOT])
        await self.discord.dispatch("MESSAGE_CREATE", message)
        return message

    async def answered(self, message: dict, text: str) -> list:
        """Wait until the replies to ``message`` (a chain) show exactly ``text``; return them."""

        def done() -> bool:
            return "\n".join(m.content for m in self.chain(message["id"])).replace("\n", "") == text.replace("\n", "")

        await wait_until(done, f"the answer to {message['content'][:40]!r}")
        return self.chain(message["id"])

    async def interact(
        self, data: dict, *, by: dict = p.ALICE, kind: int = 2, channel: dict | None = None, locale: str = "en-US"
    ) -> str:
        """Send an INTERACTION_CREATE; return its token (shaped like Discord's, so a leak is recognisable)."""
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        payload = p.interaction(data, token, by=by, kind=kind, channel=channel, locale=locale)
        await self.discord.dispatch("INTERACTION_CREATE", payload)
        return token

    async def command_answered(self, token: str, done: Callable[[list[str]], bool]) -> list[str]:
        """Wait until the messages answering interaction ``token`` satisfy ``done``; return their contents."""
        await wait_until(lambda: done([m.content for m in self.discord.answers_for(token)]), "a command's answer")
        return [m.content for m in self.discord.answers_for(token)]

    async def history_becomes(self, key: ConversationKey, texts: list[str]) -> list[StoredMessage]:
        """Wait until the stored conversation holds ``texts`` (the answer is stored after its last edit lands)."""
        return await poll(
            lambda: self.store.recent_history(key), lambda got: [m.text for m in got] == texts, f"{key} to hold {texts}"
        )

    def chain(self, message_id: str) -> list:
        """The bot's replies to a message: the first replies to it, each later one to the one before."""
        chain = []
        replies = self.discord.replies_to(message_id)
        while replies:
            chain.append(replies[0])
            replies = self.discord.replies_to(replies[0].id)
        return chain


SUMMARIZE_DEFAULT = 150  # above Discord's page of 100 messages: one default, honoured however many pages it takes


@pytest.fixture(name="generator")
def generator_fixture() -> FakeGenerator:
    return FakeGenerator(" The answer is 4.")


@pytest.fixture(name="checkpoints")
def checkpoints_fixture(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for name in ("gpt2-small-sft.safetensors", "gpt2-medium-sft.pth"):
        (directory / name).write_bytes(b"weights")
    return directory


@pytest.fixture(name="manager")
def manager_fixture(store: Store, generator: FakeGenerator, checkpoints: Path) -> ConversationManager:
    return ConversationManager(
        store,
        generator,
        _TOKENIZER,
        AdminPolicy({"discord": [p.ADMIN_ID]}),
        RateLimiter(1000),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, request_timeout_s=60, summarize_default=SUMMARIZE_DEFAULT),
    )


@pytest.fixture(name="application")
def application_fixture(request: pytest.FixtureRequest) -> dict:
    """What GET /oauth2/applications/@me says; a test may parametrize it (indirect) to have a team own the bot."""
    return getattr(request, "param", None) or p.application()


def config_for(fake: FakeDiscord, **options: Any) -> DiscordConfig:
    """The adapter's configuration for talking to ``fake``: its address is all that differs from Discord's."""
    return DiscordConfig(
        **{
            "token": TOKEN,
            "api_url": fake.api_base,
            "rate_limit_max_wait_s": 30.0,
            "edit_interval_s": EDIT_INTERVAL_S,
            "close_grace_s": 5.0,
        }
        | options
    )


@contextlib.asynccontextmanager
async def serving(adapter: DiscordAdapter, fake: FakeDiscord) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``adapter`` until it is connected to ``fake``; close it (and wait for `run` to end) on the way out."""
    task = asyncio.create_task(adapter.run())
    try:
        await wait_until(lambda: fake.connected or task.done(), "the bot to connect")
        if task.done():
            task.result()  # raise what stopped it
        yield task
    finally:
        await adapter.close()
        await asyncio.wait_for(task, WAIT_S)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused, as to a Discord that is not there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(name="fake")
async def fake_fixture() -> AsyncIterator[FakeDiscord]:
    """A fake Discord for a test that connects its own adapter (or the whole service) to it."""
    discord = FakeDiscord(TOKEN)
    await discord.start()
    yield discord
    await discord.close()


async def no_wait(seconds: float) -> None:
    """Late edits without the platform's wait: what the platform would allow after it, at once."""
    await asyncio.sleep(0)


@pytest.fixture(name="bot")
async def bot_fixture(manager, generator, store, application) -> AsyncIterator[Bot]:
    fake = FakeDiscord(TOKEN, application=application)
    await fake.start()
    adapter = DiscordAdapter(manager, config_for(fake), late_edits=LateEdits(sleep=no_wait))
    try:
        async with serving(adapter, fake) as task:
            yield Bot(fake, adapter, generator, store, task)
    finally:
        await fake.close()
