"""When Discord says no, through the real discord.py client and a fake Discord: a rate limit longer than the
configured ceiling fails the call at once (the caller decides what to do with the wait) instead of hanging it, for
one route and for Discord's global limit alike; a command whose answer failed says so where it said "thinking…";
an answer whose interaction expired is dropped with one line in the log, not retried; a Discord that cannot be used
stops `run` with one sentence saying what to do (`PlatformStartError` before serving, `CredentialsRevoked` after)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.adapters.discord import DiscordAdapter
from bot.adapters.platform import CredentialsRevoked, PlatformStartError
from bot.core.messages import Incoming, Reply
from tests.bot.adapters.discord_fixtures import (  # noqa: F401  (fixtures, registered under short names)
    TOKEN,
    WAIT_S,
    Bot,
    application_fixture,
    bot_fixture,
    checkpoints_fixture,
    closed_port,
    config_for,
    fake_fixture,
    generator_fixture,
    manager_fixture,
    serving,
    wait_until,
)
from tests.fake_discord import FakeDiscord
from tests.fake_discord import payloads as p

CEILING_S = 30.0  # discord.py's smallest ceiling, and the setting's default
LONG_S = 600.0  # a 429 that asks for ten minutes
FAST_S = 5.0  # "at once", with room for a loaded machine


class ProbeCore:
    """A core that answers every message and command with one `Reply.send`, and records how the adapter's call went:
    what it raised (None if nothing) and how long it took."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[Exception | None, float]] = []

    async def handle(self, incoming: Incoming, reply: Reply) -> None:
        started = time.monotonic()
        try:
            await reply.send("probe")
        except Exception as e:  # what the adapter raised is the finding
            self.outcomes.append((e, time.monotonic() - started))
        else:
            self.outcomes.append((None, time.monotonic() - started))


@pytest.fixture
async def probe(fake: FakeDiscord) -> AsyncIterator[ProbeCore]:
    core = ProbeCore()
    adapter = DiscordAdapter(core, config_for(fake, rate_limit_max_wait_s=CEILING_S))  # type: ignore[arg-type]
    async with serving(adapter, fake):
        yield core


async def ask(fake: FakeDiscord, via: str) -> None:
    if via == "reply":
        message = p.message(p.CHANNEL_ID, p.ALICE, f"<@{p.APP_ID}> hello", mentions=[p.BOT])
        await fake.dispatch("MESSAGE_CREATE", message)
    else:
        await fake.dispatch("INTERACTION_CREATE", p.interaction(p.slash("model"), "aW50ZXJhY3Rpb246" + p.snowflake()))


ROUTES = {
    "reply": ("POST", rf"/channels/{p.CHANNEL_ID}/messages"),  # the bot's client (discord.py's HTTPClient)
    "interaction": ("PATCH", rf"/webhooks/{p.APP_ID}/[^/]+/messages/@original"),  # discord.py's webhook adapter
}


@pytest.mark.parametrize("via", ["reply", "interaction"])
@pytest.mark.parametrize("is_global", [False, True], ids=["one route", "global"])
async def test_a_429_longer_than_the_ceiling_fails_the_call_at_once_and_the_next_one_goes_through(
    fake: FakeDiscord, probe: ProbeCore, via: str, is_global: bool, caplog: pytest.LogCaptureFixture
) -> None:
    method, route = ROUTES[via]
    fake.rate_limit_once(method, route, retry_after=LONG_S, is_global=is_global)
    await ask(fake, via)
    await wait_until(lambda: probe.outcomes, "the first answer to end", timeout=FAST_S * 2)
    [(error, took)] = probe.outcomes
    assert error is None and took < FAST_S  # not waited out: the message is dropped, with one line saying why
    dropped = [r for r in caplog.records if "over the 30 s ceiling" in r.getMessage()]
    assert len(dropped) == 1 and "600 s" in dropped[0].getMessage()

    await ask(fake, via)  # nothing is held back (a global 429 waited out would block every call for ten minutes)
    await wait_until(lambda: len(probe.outcomes) == 2, "the second answer", timeout=FAST_S * 2)
    assert probe.outcomes[1][0] is None and probe.outcomes[1][1] < FAST_S
    assert [c.status for c in fake.calls_to(method, route)] == [429, 200]


async def test_a_command_answer_rate_limited_past_the_ceiling_replaces_thinking_once_discord_allows(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    bot.discord.rate_limit_once("PATCH", ROUTES["interaction"][1], retry_after=LONG_S)
    token = await bot.interact(p.slash("model"))
    answers = await bot.command_answered(token, lambda got: any(got))
    # The deferred response itself (no follow-up under a "thinking…" left forever), with a note why it is late.
    assert answers[0].startswith("Model:") and answers[0].endswith("rate-limited for 600 s)")
    assert bot.discord.answers_for(token)[0].payload["original"]
    assert len([r for r in caplog.records if "over the 30 s ceiling" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("status", "code"), [(401, 50027), (404, 10015)], ids=["Invalid Webhook Token", "Unknown Webhook"]
)
async def test_an_answer_whose_interaction_expired_is_dropped_with_one_line(
    bot: Bot, caplog: pytest.LogCaptureFixture, status: int, code: int
) -> None:
    bot.generator.delay_s, bot.generator.hold = 0.01, asyncio.Event()
    token = await bot.interact(p.slash("translate", language="German", text="Good morning"))
    await wait_until(lambda: bot.generator.prompts, "the model to start")
    bot.discord.expire_interaction(token, status, code)  # the model took longer than Discord keeps the token
    bot.generator.hold.set()
    await wait_until(lambda: any(c.status == status for c in bot.discord.calls), "Discord to refuse the answer")
    await bot.adapter.close()  # lets the answer finish whatever it still does

    assert [c.status for c in bot.discord.calls if token in c.path] == [200, status]  # deferred; then no retries
    logged = [r for r in caplog.records if r.name.startswith("bot.")]
    assert [r.levelno for r in logged if "expired" in r.getMessage()] == [logging.WARNING]
    assert [r for r in logged if r.levelno >= logging.ERROR or r.exc_info] == []  # no tracebacks, no errors


STARTS = {  # how Discord can refuse the bot before it serves anyone -> what the one sentence must tell the operator
    "wrong token": ({"token": "not-the-token"}, r"^Discord refused the bot token: .*SCRATCHBOT_DISCORD_TOKEN"),
    "intent not enabled": (
        {"message_content": True},
        r"^Discord refused .*\"Message Content Intent\".* or unset SCRATCHBOT_DISCORD_MESSAGE_CONTENT",
    ),
    "unreachable": (
        {"api_url": "http://127.0.0.1:{port}/api/v10"},
        r"^cannot reach Discord at http://127\.0\.0\.1:\d+/api/v10 .*SCRATCHBOT_DISCORD_API_URL",
    ),
}


@pytest.mark.parametrize("case", STARTS)
async def test_a_discord_that_cannot_be_used_stops_run_with_one_sentence_saying_what_to_do(
    manager, fake: FakeDiscord, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    options, says = STARTS[case]
    options = {k: v.format(port=closed_port()) if k == "api_url" else v for k, v in options.items()}
    adapter = DiscordAdapter(manager, config_for(fake, **options))
    with pytest.raises(PlatformStartError, match=says) as refused:
        await asyncio.wait_for(adapter.run(), WAIT_S)
    assert "\n" not in str(refused.value)
    assert [r for r in caplog.records if r.exc_info] == []  # nobody logged a traceback on the way
    await adapter.close()  # safe after run ended, and again
    await adapter.close()


async def test_a_token_reset_while_serving_stops_discord_saying_which_setting_to_fix(
    manager, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = DiscordAdapter(manager, config_for(fake))
    with pytest.raises(CredentialsRevoked, match=r"SCRATCHBOT_DISCORD_TOKEN") as revoked:
        async with serving(adapter, fake) as task:
            started = time.monotonic()
            await fake.reset_token("a-new-token")  # someone pressed Reset Token in the developer portal
            await asyncio.wait([task], timeout=WAIT_S)
            assert time.monotonic() - started < FAST_S  # at once, not after reconnect attempts
    assert "\n" not in str(revoked.value)
    assert [r for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, "<html>Not Found</html>"), (200, "plain text"), (200, '{"ok": true}'), (500, "oops")],
    ids=["404 page", "text", "other JSON", "500"],
)
async def test_an_address_that_is_not_discord_stops_run_with_one_sentence(
    manager, fake: FakeDiscord, caplog: pytest.LogCaptureFixture, status: int, body: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="text/html" if "<" in body else "application/json")

    app = web.Application()
    app.router.add_route("*", "/{anything:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        adapter = DiscordAdapter(manager, config_for(fake, api_url=f"http://127.0.0.1:{port}/api/v10"))
        with pytest.raises(PlatformStartError, match=r"does not answer as Discord's API does .*DISCORD_API_URL"):
            await asyncio.wait_for(adapter.run(), 60)  # discord.py retries a 500 a few times first
        assert [r for r in caplog.records if r.exc_info] == []
    finally:
        await runner.cleanup()
