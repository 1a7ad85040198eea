"""Slack's rate limits through the real SDK and a fake Slack, at Slack's own pace: answers streaming into one
channel share its budget of about one message write a second, and a Retry-After over the ceiling is not waited out
by the answer: one WARNING line, and the final text (with a note) once Slack allows it."""

from __future__ import annotations

import asyncio
import logging
from itertools import pairwise

import pytest

from bot.adapters.pacing import SLACK_PACE, LateEdits
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import ANSWER, running, socket_config
from tests.fake_slack.payloads import event_callback, mention
from tests.fake_slack.server import eventually

fake_slack, generator, manager = fixtures.fake_slack, fixtures.generator, fixtures.manager
WRITES = ("chat.postMessage", "chat.update")


async def no_wait(seconds: float) -> None:
    """The platform's wait, skipped: what Slack would allow after it, at once."""
    await asyncio.sleep(0)


async def test_six_answers_in_one_channel_share_its_write_budget(fake_slack, manager, generator) -> None:
    generator.delay_s = 0.1  # each answer streams for about half a second
    questions = [f"17000002{i:02d}.000100" for i in range(6)]
    async with running(manager, socket_config(fake_slack, pace=SLACK_PACE)):
        for ts in questions:
            await fake_slack.send("events_api", event_callback(mention("What is 2+2?", ts)))
        await eventually(
            lambda: all(fake_slack.thread("C1", ts) == [ANSWER] for ts in questions), 60, what="six answers"
        )
    writes = sorted(c.at for c in fake_slack.calls if c.method in WRITES and c.args.get("channel") == "C1")
    assert len(writes) >= 12  # a placeholder and a final edit each, at least
    gaps = [later - earlier for earlier, later in pairwise(writes)]
    # About one write a second in the channel, however many answers (0.2 s of slack for the way to the fake).
    assert min(gaps) >= 0.8, gaps


async def test_a_retry_after_over_the_ceiling_is_not_waited_out(
    fake_slack, manager, generator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake_slack.rate_limit["chat.update"] = [600]  # the channel's edits are limited for ten minutes
    late = LateEdits(sleep=no_wait)
    ts = "1700000300.000100"
    async with running(manager, socket_config(fake_slack), late):
        await fake_slack.send("events_api", event_callback(mention("What is 2+2?", ts)))
        note = "(shown late: this channel was rate-limited for 600 s)"
        await eventually(lambda: fake_slack.thread("C1", ts) == [f"{ANSWER}\n\n{note}"], what="the late answer")
    assert len([r for r in caplog.records if "over the 30 s ceiling" in r.getMessage()]) == 1
    refused, shown_late = (c.args["text"] for c in fake_slack.called("chat.update"))
    assert refused == ANSWER and shown_late.startswith(ANSWER)  # the final edit, refused, then made late
