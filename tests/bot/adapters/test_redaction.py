"""The log filter that keeps tokens out of what a chat SDK logs (here with Discord's token patterns)."""

from __future__ import annotations

import logging

import pytest

from bot.adapters.discord import TOKEN_PATHS
from bot.adapters.redaction import REDACTED, SecretRedactingFilter, install_redaction

TOKEN = "MTIz.bot-token.abc"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "POST https://discord.com/api/v10/interactions/123/aW50ZXJhY3Rpb24_x-y/callback has returned 204",
            f"POST https://discord.com/api/v10/interactions/123/{REDACTED}/callback has returned 204",
        ),
        (
            "PATCH https://discord.com/api/v10/webhooks/42/tok-en.x/messages/@original",
            f"PATCH https://discord.com/api/v10/webhooks/42/{REDACTED}/messages/@original",
        ),
        ("POST /webhooks/42/tok?wait=1", f"POST /webhooks/42/{REDACTED}?wait=1"),
        (
            "event {'id': '9', 'token': 'aW50ZXJh', 'version': 1}",
            f"event {{'id': '9', 'token': '{REDACTED}', 'version': 1}}",
        ),
        ('{"token": "aW50ZXJh"}', f'{{"token": "{REDACTED}"}}'),
        (f"Authorization: Bot {TOKEN}", f"Authorization: Bot {REDACTED}"),
        ("GET /channels/123/messages?limit=50", "GET /channels/123/messages?limit=50"),  # nothing secret: unchanged
    ],
)
def test_tokens_are_redacted(message: str, expected: str) -> None:
    assert SecretRedactingFilter([TOKEN], TOKEN_PATHS).redact(message) == expected


def test_installed_on_every_logger_of_the_sdk_with_arguments_formatted(caplog: pytest.LogCaptureFixture) -> None:
    child = logging.getLogger("fakesdk.http")  # exists before installing, as an imported SDK's loggers do
    install_redaction("fakesdk", SecretRedactingFilter([TOKEN], TOKEN_PATHS))
    install_redaction("fakesdk", SecretRedactingFilter([TOKEN], TOKEN_PATHS))  # again (a restart): one filter, not two
    with caplog.at_level(logging.DEBUG):
        child.debug("%s %s returned %d", "POST", "/interactions/1/secret-token/callback", 204)
        logging.getLogger("fakesdk").warning("token is %s", TOKEN)
    assert [r.getMessage() for r in caplog.records] == [
        f"POST /interactions/1/{REDACTED}/callback returned 204",
        f"token is {REDACTED}",
    ]
    assert len(child.filters) == 1
