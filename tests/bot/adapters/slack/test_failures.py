"""When Slack cannot be reached or refuses our tokens: at start-up one sentence naming what to fix
(`PlatformStartError`), and while serving the Slack adapter stops for good with one ERROR line naming the setting,
no traceback for the messages that were being answered, and nothing more sent to Slack."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from aiohttp import web

from bot.adapters.platform import CredentialsRevoked, PlatformStartError
from bot.adapters.slack import adapter as slack_adapter
from bot.adapters.slack.adapter import SlackAdapter
from bot.adapters.slack.config import SlackConfig
from bot.app import serve_platforms
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import ANSWER, APP_TOKEN, BOT_TOKEN, http_config, socket_config
from tests.fake_slack.payloads import TS, event_callback, mention
from tests.fake_slack.server import eventually
from tests.fake_slack.signing import SignedPoster

fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager
SECOND_TS, THIRD_TS = "1700000101.000100", "1700000102.000100"


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shows_partial(slack, ts: str) -> bool:
    """Whether the answer in thread ``ts`` shows some text, with the cursor that says more is coming."""
    return any(text.endswith(" …") and text != "…" for text in slack.thread("C1", ts))


async def deliver(slack, adapter: SlackAdapter, body: dict) -> None:
    """An event as the adapter's transport receives it: over the WebSocket, or posted and signed (HTTP mode)."""
    if adapter.http_port is None:
        await slack.send("events_api", body)
    else:
        poster = SignedPoster(f"http://127.0.0.1:{adapter.http_port}/slack/events", fixtures.SIGNING_SECRET)
        assert (await poster.event(body))[0] == 200


@pytest.mark.parametrize("error", ["token_revoked", "invalid_auth", "account_inactive", "not_authed"])
@pytest.mark.parametrize("transport", ["socket", "http"])
async def test_a_bot_token_refused_while_serving_stops_slack_with_one_error_line(
    fake_slack, manager, generator, caplog, transport: str, error: str
) -> None:
    caplog.set_level(logging.INFO)
    config = (socket_config if transport == "socket" else http_config)(fake_slack)
    adapter = SlackAdapter(manager, config)
    serving = asyncio.create_task(serve_platforms([adapter]))
    await asyncio.wait_for(adapter.ready.wait(), 15)
    await deliver(fake_slack, adapter, event_callback(mention("What is 2+2?", TS)))
    await eventually(lambda: fake_slack.thread("C1", TS) == [ANSWER], what="an answer while the token works")
    generator.answer = " " + " ".join(f"word{i}" for i in range(40))
    generator.hold, generator.delay_s = asyncio.Event(), 0.01  # two answers stream halfway, then wait
    for ts in (SECOND_TS, THIRD_TS):
        await deliver(fake_slack, adapter, event_callback(mention("And now?", ts)))
    await eventually(lambda: all(shows_partial(fake_slack, ts) for ts in (SECOND_TS, THIRD_TS)), what="two halves")
    shown = list(fake_slack.messages)
    fake_slack.refused_tokens[BOT_TOKEN] = error  # revoked while both answers are in progress
    generator.hold.set()
    assert await asyncio.wait_for(serving, 15) == 1  # no platform left: `scratchbot run` exits non-zero
    calls = len(fake_slack.calls)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"the slack adapter stopped: Slack refused SCRATCHBOT_SLACK_BOT_TOKEN while serving ({error} from "
        "chat.update): the token was revoked or regenerated, the app uninstalled, or the workspace deactivated; "
        "set SCRATCHBOT_SLACK_BOT_TOKEN to the app's current token and restart",
        "no platform is left to serve; stopping",
    ]
    assert not [r for r in caplog.records if r.exc_info] and "Traceback" not in caplog.text
    assert BOT_TOKEN not in caplog.text
    assert fake_slack.connected == 0 and fake_slack.messages == shown  # nothing more could be shown
    if transport == "http":  # the endpoint is closed: Slack's next delivery finds nobody
        with pytest.raises(OSError):
            await deliver(fake_slack, adapter, event_callback(mention("Anyone?", "1700000103.000100")))
    await asyncio.sleep(0.3)
    assert len(fake_slack.calls) == calls  # nothing more was sent to Slack after the adapter stopped


async def test_an_app_token_refused_on_reconnect_stops_slack_naming_it(fake_slack, manager) -> None:
    adapter = SlackAdapter(manager, socket_config(fake_slack))
    task = asyncio.create_task(adapter.run())
    await asyncio.wait_for(adapter.ready.wait(), 15)
    fake_slack.refused_tokens[APP_TOKEN] = "token_revoked"
    await fake_slack.disconnect()  # Slack rotates the connection; the SDK asks for a new URL with the app token
    with pytest.raises(CredentialsRevoked, match=r"^Slack refused SCRATCHBOT_SLACK_APP_TOKEN while serving \(token_re"):
        await asyncio.wait_for(task, 15)
    assert fake_slack.connected == 0
    await adapter.close()  # what serve_platforms does at the end: harmless after a stop


def start_failures(slack) -> dict[str, tuple[dict, dict, str]]:
    """Each way a start fails: the configuration's changes, what the fake Slack answers a method, the sentence."""
    return {
        "unreachable": ({"api_url": f"http://127.0.0.1:{free_port()}/api/"}, {},
         r"^cannot reach Slack's Web API at http://127\.0\.0\.1:\d+/api/ \(Cannot connect to host .*\): check this "
         r"machine's network connection, or SCRATCHBOT_SLACK_API_URL if Slack is reached through a proxy$"),
        "not_slack": ({"api_url": f"{slack.base}/not-slack/"}, {},
         r"^http://127\.0\.0\.1:\d+/not-slack/ answered auth\.test with HTTP 404, not as Slack answers: if Slack is "
         r"up, set SCRATCHBOT_SLACK_API_URL to its Web API \(unset: Slack's own\)$"),
        "bad_bot_token": ({"bot_token": "xoxb-wrong"}, {},
         r"^Slack refused SCRATCHBOT_SLACK_BOT_TOKEN \(invalid_auth from auth\.test\): set it to the Bot User OAuth "
         r"Token \(xoxb-\.\.\.\) on the app's OAuth & Permissions page"),
        "bad_app_token": ({"app_token": "xapp-wrong"}, {},
         r"^Slack refused SCRATCHBOT_SLACK_APP_TOKEN \(invalid_auth from apps\.connections\.open\): set it to an "
         r"app-level token \(xapp-\.\.\.\) with the connections:write scope"),
        "bot_token_of_the_wrong_kind": ({}, {"auth.test": "not_allowed_token_type"},
         r"^Slack refused SCRATCHBOT_SLACK_BOT_TOKEN \(not_allowed_token_type from auth\.test\)"),
        "slack_failing": ({}, {"auth.test": "fatal_error"},
         r"^Slack answered auth\.test with fatal_error: try again in a few minutes$"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["unreachable", "not_slack", "bad_bot_token", "bad_app_token", "bot_token_of_the_wrong_kind", "slack_failing"],
)
async def test_a_start_that_cannot_work_is_one_sentence_saying_what_to_fix(fake_slack, manager, caplog, case) -> None:
    changes, answers, sentence = start_failures(fake_slack)[case]
    fake_slack.refused_tokens.update({"xoxb-wrong": "invalid_auth", "xapp-wrong": "invalid_auth"})
    fake_slack.errors.update(answers)
    adapter = SlackAdapter(manager, socket_config(fake_slack, **changes))
    with pytest.raises(PlatformStartError, match=sentence) as raised:
        await asyncio.wait_for(adapter.run(), 15)
    assert "\n" not in str(raised.value) and raised.value.__cause__ is None
    assert not [r for r in caplog.records if r.exc_info] and not fake_slack.sockets  # nothing connected


async def test_an_http_port_already_taken_is_one_sentence(fake_slack, manager) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        adapter = SlackAdapter(manager, http_config(fake_slack, http_port=port))
        with pytest.raises(
            PlatformStartError, match=rf"^Slack HTTP mode cannot listen on 127\.0\.0\.1:{port} \("
        ) as raised:
            await asyncio.wait_for(adapter.run(), 15)
    assert "set SCRATCHBOT_SLACK_HTTP_PORT" in str(raised.value)


async def test_a_socket_mode_connection_that_cannot_open_is_one_sentence(
    fake_slack, manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that lets the Web API through but not the WebSocket: slack_sdk would retry forever, silently.
    closed = free_port()
    monkeypatch.setattr(
        type(fake_slack), "_apps_connections_open", lambda self, args, request: {"url": f"ws://127.0.0.1:{closed}/ws"}
    )
    monkeypatch.setattr(slack_adapter, "START_TIMEOUT_S", 1.0)
    adapter = SlackAdapter(manager, socket_config(fake_slack))
    with pytest.raises(
        PlatformStartError, match=r"^cannot open Slack's Socket Mode connection within 1 s: .*WebSocket"
    ):
        await asyncio.wait_for(adapter.run(), 15)


@pytest.mark.parametrize("body", ["plain text", '{"ok": true}', "[]"])
async def test_an_address_that_is_not_slack_is_one_sentence(manager, body: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{anything:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/"
    try:
        adapter = SlackAdapter(manager, socket_config_for(url))
        with pytest.raises(PlatformStartError, match=r"SCRATCHBOT_SLACK_API_URL"):
            await asyncio.wait_for(adapter.run(), 15)
    finally:
        await runner.cleanup()


def socket_config_for(api_url: str) -> SlackConfig:
    return SlackConfig(bot_token=BOT_TOKEN, app_token=APP_TOKEN, api_url=api_url, close_grace_s=1.0)
