"""Slack text both ways: model output that can ping nobody, user markup made plain, secrets scrubbed from logs."""

from __future__ import annotations

import logging
import sys

import pytest

from bot.adapters.redaction import REDACTED, SecretRedactingFilter
from bot.adapters.slack.text import SECRETS, SLACK_TOKEN, escape, plain
from tests.fake_slack import fixtures

generator, manager = fixtures.generator, fixtures.manager


@pytest.mark.parametrize(
    ("model_output", "posted"),
    [
        ("<!channel> <!here> <!everyone>", "&lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt;"),
        ("ping <@U123> and <!subteam^S1>", "ping &lt;@U123&gt; and &lt;!subteam^S1&gt;"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("already &lt; escaped", "already &amp;lt; escaped"),  # shown exactly as the model wrote it
        ("*bold* `code`", "*bold* `code`"),
    ],
)
def test_escape_leaves_no_markup_that_slack_would_act_on(model_output: str, posted: str) -> None:
    assert escape(model_output) == posted
    assert "<" not in escape(model_output) and ">" not in escape(model_output)


def test_plain_turns_slack_markup_into_what_a_reader_sees() -> None:
    text = "<@UBOT> ask <@U2|bob> in <#C1|general> about <https://x.org|the docs> &amp; <!here> &lt;tag&gt;"
    assert plain(text, bot_user_id="UBOT") == "ask @bob in #general about the docs & @here <tag>"
    assert plain("<@U2> <mailto:a@b.c>") == "@U2 mailto:a@b.c"


def test_redaction_scrubs_configured_secrets_token_shapes_and_token_fields() -> None:
    redactor = SecretRedactingFilter(["s3cr3t-signing", None, ""], [SLACK_TOKEN])
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "secret %s, bot %s, body %s, form %s",
        (
            "s3cr3t-signing",
            "xoxb-1-2-abc",
            '{"token": "verif123", "x": 1}',
            "token=verif456&user_id=U1",
        ),
        None,
    )
    assert redactor.filter(record)
    message = record.getMessage()
    for secret in ("s3cr3t-signing", "xoxb-1-2-abc", "verif123", "verif456"):
        assert secret not in message
    assert message.count(REDACTED) == 4 and "user_id=U1" in message


def test_redaction_also_scrubs_tracebacks() -> None:
    redactor = SecretRedactingFilter(["hunter2"], [SLACK_TOKEN])
    try:
        raise RuntimeError("request failed with hunter2")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    redactor.filter(record)
    assert "hunter2" not in logging.Formatter().format(record)


def test_response_urls_are_redacted_in_every_record_once_an_adapter_exists(manager, monkeypatch, caplog) -> None:
    from bot.adapters import redaction
    from bot.adapters.slack.adapter import SlackAdapter
    from bot.adapters.slack.config import SlackConfig

    monkeypatch.setattr(redaction, "_redactors", {})  # nothing installed by earlier tests: the adapter must do it
    SlackAdapter(manager, SlackConfig(bot_token="xoxb-test", signing_secret="shh"))
    url = "https://hooks.slack.com/commands/T1/123/abcDEF"
    with caplog.at_level(logging.DEBUG):  # what Bolt's `respond` sends through, and a record of the core's
        logging.getLogger("slack_sdk.webhook.async_client").debug("Sending a request - url: %s, body: %s", url, "{}")
        logging.getLogger("bot.core.conversation").error("failed: %s", url.replace("/", "\\/"))
    assert [r.getMessage() for r in caplog.records] == [
        f"Sending a request - url: https://hooks.slack.com/{REDACTED}, body: {{}}",
        f"failed: https:\\/\\/hooks.slack.com\\/{REDACTED}",
    ]


@pytest.mark.parametrize(
    "logged",
    [
        "https://hooks.slack.com/commands/T1/123/abcDEF",
        r'"response_url": "https:\/\/hooks.slack.com\/commands\/T1\/123\/abcDEF"',  # Slack's JSON
        r"'response_url': 'https:\\/\\/hooks.slack.com\\/commands\\/T1\\/123\\/abcDEF'",  # its repr
        "response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1%2F123%2FabcDEF&trigger_id=1",  # a command's form
        "%22response_url%22%3A+%22https%3A%5C%2F%5C%2Fhooks.slack.com%5C%2Fcommands%5C%2FT1%5C%2F123%5C%2FabcDEF",
        '"response_url": "https://elsewhere.example/commands/T1/123/abcDEF"',  # the field, whatever the host
    ],
    ids=["raw", "json", "repr-of-json", "form", "json-in-a-form", "any-host"],
)
def test_a_response_url_is_redacted_in_every_encoding_slack_writes(logged: str) -> None:
    text = SECRETS.redact(logged)
    assert "abcDEF" not in text and "T1" not in text and REDACTED in text
