"""What a Slack conversation logs at DEBUG never shows a credential, in any encoding Slack or the SDKs write it in.

The credentials: the bot and app tokens, the signing secret, Slack's verification token in every payload, and a
command's response_url, which lets anyone post into the channel for half an hour. Slack's JSON writes the URL as
`https:\\/\\/hooks.slack.com\\/commands\\/...` (the Socket Mode client logs every envelope as a repr, doubling the
backslashes), a form body as `https%3A%2F%2Fhooks.slack.com%2F...`, and an interactive payload is that JSON inside a
form. The commands run through the real Bolt app and SDK clients against the fake Slack; a response_url is on
hooks.slack.com, which resolves to the fake here (over plain HTTP: the fake has no certificate). The log is read as
pytest formats it, tracebacks included: aiohttp's TooManyRedirects names the URL, and the core logs it."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp.connector
import pytest
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from bot.adapters.redaction import REDACTED
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, http_config, running, socket_config
from tests.fake_slack.payloads import TS, message_shortcut, slash_command
from tests.fake_slack.server import FakeSlack, eventually
from tests.fake_slack.signing import SignedPoster

fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager

RESPONSE_SECRET = "R3sp0nseUrlS3cret"  # the last segment of a response_url: what makes it a credential
RESPONSE_PATH = f"commands/T1/1234567890/{RESPONSE_SECRET}"
VERIFICATION_TOKEN = "legacy-verification-token"  # what the fake's payloads carry as "token"


@pytest.fixture
def response_url(fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    """A response_url as Slack writes it, answered by the fake: hooks.slack.com resolves to the fake's address."""
    port = URL(fake_slack.base).port

    class HooksOnTheFake(ThreadedResolver):
        async def resolve(self, host: str, port_: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
            if host != "hooks.slack.com":
                return await super().resolve(host, port_, family)
            return [
                {"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}
            ]  # fmt: skip

    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", HooksOnTheFake)
    return f"http://hooks.slack.com/{RESPONSE_PATH}"


def credentials_in(text: str) -> list[str]:
    """Each credential ``text`` shows, in any form. The secret segment of the response_url is the same in every
    encoding (only its slashes change), so finding it finds the URL however it was written; the whole path is
    looked for in each encoding as well, to show which form leaked."""
    path_forms = [RESPONSE_PATH, RESPONSE_PATH.replace("/", "\\/"), RESPONSE_PATH.replace("/", "\\\\/")]
    path_forms += [quote(RESPONSE_PATH, safe=""), quote(RESPONSE_PATH.replace("/", "\\/"), safe="")]
    looked_for = [*path_forms, RESPONSE_SECRET, BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, VERIFICATION_TOKEN]
    return [secret for secret in looked_for if secret in text]


async def logged(caplog: pytest.LogCaptureFixture, text: str, what: str) -> None:
    await eventually(lambda: text in caplog.text, what=what)


async def test_socket_mode_logs_commands_and_their_failures_without_a_credential(
    fake_slack: FakeSlack, manager, response_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(manager, socket_config(fake_slack)):
        await fake_slack.send("slash_commands", slash_command("/model", "", response_url))
        await eventually(lambda: fake_slack.ephemeral, what="the answer through the response_url")
        fake_slack.redirect_responses = True  # the next answer fails, and the core logs why
        await fake_slack.send("slash_commands", slash_command("/model", "", response_url))
        await logged(caplog, "could not even send the error message", "the failure logged")
    text = caplog.text
    assert credentials_in(text) == []
    # The SDKs did log everything that could leak: the envelope, the webhook request, the failure's traceback.
    assert "Received message" in text and f'"response_url": "{REDACTED}"' in text
    assert f"Sending a request - url: http://hooks.slack.com/{REDACTED}" in text
    assert f"TooManyRedirects: 0, message='', url='http://hooks.slack.com/{REDACTED}'" in text


async def test_http_mode_logs_commands_refusals_and_failures_without_a_credential(
    fake_slack: FakeSlack, manager, response_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    command = slash_command("/model", "", response_url)
    # An interactive payload as Slack posts it: its JSON (slashes escaped) URL-encoded as the form field "payload".
    shortcut = message_shortcut("summarize_thread", {"ts": TS, "text": "hi", "user": "U1"}, response_url)
    shortcut_form = urlencode({"payload": json.dumps(shortcut).replace("/", "\\/")})
    async with running(manager, http_config(fake_slack)) as adapter:
        post = SignedPoster(f"http://127.0.0.1:{adapter.http_port}/slack/events", SIGNING_SECRET)
        assert await post.command(command) == (200, "")
        await eventually(lambda: fake_slack.ephemeral, what="the answer through the response_url")
        # Refused requests: Bolt logs each body, the command's form and the shortcut's escaped JSON in a form.
        assert (await post.command(command, signature="v0=forged"))[0] == 401
        assert (await post.post(shortcut_form, "application/x-www-form-urlencoded", age_s=600))[0] == 401
        fake_slack.redirect_responses = True
        another = slash_command("/model", "", response_url)  # a new command: the same one again is a replay
        assert await post.command(another) == (200, "")
        await logged(caplog, "could not even send the error message", "the failure logged")
    text = caplog.text
    assert credentials_in(text) == []
    assert f"response_url={REDACTED}&trigger_id" in text  # the refused command's body, scrubbed in place
    assert f"%22response_url%22%3A+%22{REDACTED}%22" in text  # the refused shortcut's, URL-encoded JSON
    assert f"Sending a request - url: http://hooks.slack.com/{REDACTED}" in text
    assert f"url='http://hooks.slack.com/{REDACTED}'" in text  # the traceback
