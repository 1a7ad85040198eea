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


def test_response_urls_are_redacted_on_every_slack_sdk_logger_once_an_adapter_exists(manager) -> None:
    from bot.adapters.slack.adapter import SlackAdapter
    from bot.adapters.slack.config import SlackConfig

    SlackAdapter(manager, SlackConfig(bot_token="xoxb-test", signing_secret="shh"))
    webhook_log = logging.getLogger("slack_sdk.webhook.async_client")  # what Bolt's `respond` sends through
    assert SECRETS in webhook_log.filters
    record = logging.LogRecord(
        webhook_log.name, logging.DEBUG, __file__, 1, "Sending a request - url: %s, body: %s",
        ("https://hooks.slack.com/commands/T1/123/abcDEF", '{"text": "hi"}'), None,
    )  # fmt: skip
    SECRETS.filter(record)
    assert record.getMessage() == f'Sending a request - url: https://hooks.slack.com/{REDACTED}, body: {{"text": "hi"}}'
