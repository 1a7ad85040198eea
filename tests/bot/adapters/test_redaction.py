"""The log redaction that keeps credentials out of every record: configured secrets and credential-shaped text (here
Discord's token paths and Slack's response_url) in every encoding a log shows them in, scrubbed in the records of
every logger, tracebacks included."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote, quote_plus, urlencode

import pytest

from bot.adapters import redaction
from bot.adapters.discord import TOKEN_PATHS
from bot.adapters.redaction import REDACTED, SecretRedactingFilter, install_redaction, secret_field, secret_path

TOKEN = "MTIz.bot-token.abc"
# Discord's two token paths, built to match every encoding (what discord.py's TOKEN_PATHS should be).
ESCAPED_TOKEN_PATHS = (secret_path(r"/webhooks/\d+/"), secret_path(r"/interactions/\d+/"))


@pytest.mark.parametrize("paths", [TOKEN_PATHS, ESCAPED_TOKEN_PATHS], ids=["discord", "secret_path"])
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
def test_tokens_are_redacted(paths: tuple[re.Pattern[str], ...], message: str, expected: str) -> None:
    assert SecretRedactingFilter([TOKEN], paths).redact(message) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (  # a URL inside JSON as Slack writes it
            r'{"url": "https:\/\/discord.com\/api\/webhooks\/42\/tok-en.x\/messages\/@original"}',
            rf'{{"url": "https:\/\/discord.com\/api\/webhooks\/42\/{REDACTED}\/messages\/@original"}}',
        ),
        (  # that JSON in a repr, which doubles each backslash
            r"'https:\\/\\/discord.com\\/api\\/interactions\\/7\\/aW50ZXJh\\/callback'",
            rf"'https:\\/\\/discord.com\\/api\\/interactions\\/7\\/{REDACTED}\\/callback'",
        ),
        (  # URL-encoded, as a query or form value
            "next=https%3A%2F%2Fdiscord.com%2Fapi%2Fwebhooks%2F42%2Ftok-en.x%2Fmessages",
            f"next=https%3A%2F%2Fdiscord.com%2Fapi%2Fwebhooks%2F42%2F{REDACTED}%2Fmessages",
        ),
        (  # JSON, then URL-encoded: an interactive payload in a form
            "payload=%7B%22url%22%3A%22https%3A%5C%2F%5C%2Fx%5C%2Finteractions%5C%2F7%5C%2FaW50ZXJh%5C%2Fcallback",
            f"payload=%7B%22url%22%3A%22https%3A%5C%2F%5C%2Fx%5C%2Finteractions%5C%2F7%5C%2F{REDACTED}%5C%2Fcallback",
        ),
    ],
    ids=["json", "repr-of-json", "url-encoded", "json-in-a-form"],
)
def test_a_token_path_is_redacted_in_every_encoding(message: str, expected: str) -> None:
    assert SecretRedactingFilter([], ESCAPED_TOKEN_PATHS).redact(message) == expected


def test_a_secret_path_to_the_end_keeps_the_prefix_and_takes_the_whole_path() -> None:
    hooks = secret_path(r"hooks\.slack\.com/", to_end=True)
    redactor = SecretRedactingFilter([], [hooks])
    url = "https://hooks.slack.com/commands/T1/123/abc"
    assert redactor.redact(f"url: {url}, body: x") == f"url: https://hooks.slack.com/{REDACTED}, body: x"
    assert redactor.redact(url.replace("/", "\\/")) == f"https:\\/\\/hooks.slack.com\\/{REDACTED}"
    assert redactor.redact(quote(url, safe="")) == f"https%3A%2F%2Fhooks.slack.com%2F{REDACTED}"


@pytest.mark.parametrize(
    "logged",
    [
        lambda fields: json.dumps(fields),
        lambda fields: json.dumps(fields).replace("/", "\\/"),
        lambda fields: repr(json.dumps(fields).replace("/", "\\/")),
        lambda fields: repr(fields),
        lambda fields: urlencode(fields),
        lambda fields: urlencode({"payload": json.dumps(fields).replace("/", "\\/")}),
        lambda fields: json.dumps({"body": json.dumps(fields)}),  # JSON in JSON: \" around the field
    ],
    ids=["json", "json-escaped-slashes", "repr-of-json", "repr", "form", "json-in-a-form", "json-in-json"],
)
def test_a_secret_field_is_redacted_in_every_encoding_and_only_it(logged) -> None:
    fields = {"token": "verif123", "response_url": "https://hooks.example/commands/T1/2/s3cr3t", "user_id": "U1"}
    redactor = SecretRedactingFilter([], [secret_field("response_url")])  # "token" is always a secret field
    text = redactor.redact(logged(fields))
    assert "verif123" not in text and "s3cr3t" not in text and "hooks.example" not in text
    assert text.count(REDACTED) == 2 and "U1" in text and "user_id" in text


def test_a_field_name_inside_a_longer_name_is_not_a_secret_field() -> None:
    redactor = SecretRedactingFilter()
    assert redactor.redact("access_token=abc&token_type=bot") == "access_token=abc&token_type=bot"
    assert redactor.redact("a=1%26token%3Dabc") == f"a=1%26token%3D{REDACTED}"


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: s,
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1].replace("/", "\\/"),
        lambda s: repr(json.dumps(s)[1:-1])[1:-1],
        lambda s: quote(s, safe=""),
        lambda s: quote_plus(s),
        lambda s: quote(json.dumps(s).replace("/", "\\/")[1:-1], safe=""),
    ],
    ids=["raw", "json", "json-unicode-slashes", "repr-of-json", "quote", "quote_plus", "json-then-quote"],
)
def test_a_configured_secret_is_redacted_in_every_encoding(encode) -> None:
    secret = 'p/ss+w"rd\\ é='  # characters that JSON, repr and URL encoding each change
    redactor = SecretRedactingFilter([secret])
    assert redactor.redact(f"before {encode(secret)} after") == f"before {REDACTED} after"


@pytest.fixture
def no_redactors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no installed redactors, so what a test installs is all there is (others may have run before)."""
    monkeypatch.setattr(redaction, "_redactors", {})


def test_installed_redaction_scrubs_every_loggers_records_and_tracebacks(
    no_redactors: None, caplog: pytest.LogCaptureFixture
) -> None:
    install_redaction("fakesdk", SecretRedactingFilter([TOKEN], ESCAPED_TOKEN_PATHS))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("fakesdk.http").debug("%s %s returned %d", "POST", "/interactions/1/secret-token/cb", 204)
        logging.getLogger("fakesdk").warning("token is %s", TOKEN)
        try:
            raise RuntimeError(f"request to /webhooks/1/secret-token failed with {TOKEN}")
        except RuntimeError:
            logging.getLogger("core.elsewhere").exception("answering failed")  # not the SDK's logger: the core's
    assert [r.getMessage() for r in caplog.records] == [
        f"POST /interactions/1/{REDACTED}/cb returned 204",
        f"token is {REDACTED}",
        "answering failed",
    ]
    assert f"/webhooks/1/{REDACTED} failed with {REDACTED}" in caplog.text
    assert "secret-token" not in caplog.text and TOKEN not in caplog.text


def test_installing_again_for_an_sdk_replaces_its_redactor(no_redactors: None, caplog) -> None:
    install_redaction("fakesdk", SecretRedactingFilter(["old-secret"]))
    install_redaction("fakesdk", SecretRedactingFilter(["new-secret"]))  # a restart with a rotated token
    install_redaction("othersdk", SecretRedactingFilter(["other-secret"]))
    with caplog.at_level(logging.INFO):
        logging.getLogger("anything").info("old-secret new-secret other-secret")
    assert caplog.records[0].getMessage() == f"old-secret {REDACTED} {REDACTED}"


def test_a_record_that_cannot_be_scrubbed_is_withheld_and_the_caller_goes_on(no_redactors: None, caplog) -> None:
    class Broken(SecretRedactingFilter):
        def redact(self, text: str) -> str:
            raise RuntimeError("a bug in a pattern")

    install_redaction("fakesdk", Broken([TOKEN]))
    with caplog.at_level(logging.INFO):
        logging.getLogger("anything").info("token is %s", TOKEN)  # does not raise
    assert [r.getMessage() for r in caplog.records] == ["(log record withheld: redacting it failed)"]


def test_a_secret_of_a_character_or_two_does_not_shred_the_log() -> None:
    # A stub token such as "e" fails at the platform; the failure must stay readable.
    redactor = SecretRedactingFilter(["e", "ab"])
    assert redactor.redact("Scheduler has been shut down") == "Scheduler has been shut down"
