"""Rate limits per channel, with a ceiling: answers streaming into one channel share its write budget, and a
Retry-After longer than the ceiling is not waited out by the answer: its final text is shown once the platform
allows, with a short note, and one log line says why. Virtual time throughout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest

from bot.adapters.pacing import ChannelLimits, ChannelPacer, LateEdits, Pace
from bot.adapters.streaming import SinkReply, StreamedMessages, TooLongToWait
from tests.bot.adapters.test_streaming import Clock, Sink, timed

CEILING = ChannelLimits(channel="C1", max_wait_s=30.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def settle(late: LateEdits) -> None:
    for _ in range(100):  # the late edits sleep on the virtual clock: a few loop turns run them
        if not len(late):
            return
        await asyncio.sleep(0)
    raise AssertionError("late edits did not run")


def test_no_channel_gets_more_writes_in_any_window_than_its_pace(clock: Clock) -> None:
    pacer = ChannelPacer(Pace(calls=5, per_s=5.0), clock=clock, sleep=clock.sleep)
    assert [pacer.try_take("C1") for _ in range(6)] == [True] * 5 + [False]
    assert pacer.try_take("C2")  # another channel has its own budget
    clock.now += 4.9
    assert not pacer.try_take("C1")  # still the same five-second window: a bucket would have refilled four
    clock.now += 0.1
    assert [pacer.try_take("C1") for _ in range(6)] == [True] * 5 + [False]


async def test_taking_from_an_empty_budget_waits_for_the_next_write(clock: Clock) -> None:
    pacer = ChannelPacer(Pace(calls=1, per_s=1.0), clock=clock, sleep=clock.sleep)
    await pacer.take("C1")
    await pacer.take("C1")
    assert sum(clock.slept) == pytest.approx(1.0)


async def test_concurrent_answers_in_one_channel_share_its_budget(clock: Clock) -> None:
    sink = Sink(clock)
    pacer = ChannelPacer(Pace(calls=1, per_s=1.0), clock=clock, sleep=clock.sleep)
    limits = ChannelLimits(channel="C1", pacer=pacer)
    feeds = [asyncio.Queue[str | None]() for _ in range(6)]

    async def deltas(feed: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        while (delta := await feed.get()) is not None:
            yield delta

    answers = [
        asyncio.create_task(
            StreamedMessages(sink, limit=2000, interval_s=1.0, limits=limits, clock=clock, sleep=clock.sleep).run(
                deltas(feed)
            )
        )
        for feed in feeds
    ]
    for tick in range(50):  # five virtual seconds of words into six answers at once
        clock.now += 0.1
        for i, feed in enumerate(feeds):
            feed.put_nowait(f"a{i}w{tick} ")
        await asyncio.sleep(0)
    for feed in feeds:
        feed.put_nowait(None)
    texts = await asyncio.gather(*answers)

    times = [t for _, _, _, t in sink.calls]
    assert all(b - a >= 1.0 - 1e-9 for a, b in pairwise(times)), "more than one write a second in the channel"
    assert sorted(sink.shown) == sorted(text.strip() for text in texts)  # every answer's final text, once


async def test_a_retry_after_over_the_ceiling_is_not_waited_out_and_the_answer_is_shown_late(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(clock)
    late = LateEdits(sleep=clock.sleep)
    limits = ChannelLimits(channel="C1", late=late, max_wait_s=30.0)

    async def deltas() -> AsyncIterator[str]:
        yield "first "
        clock.now += 1.5
        sink.refuse_next = [600.0]  # the channel is rate-limited for ten minutes
        yield "second "
        clock.now += 1.5
        yield "third"

    with caplog.at_level(logging.INFO):
        shown = await StreamedMessages(
            sink, limit=2000, placeholder="…", limits=limits, clock=clock, sleep=clock.sleep
        ).run(deltas())
    assert shown == "first second third"
    assert max(clock.slept, default=0) < 30  # the answer did not wait for the platform
    assert sink.shown == ["…"]  # nothing could be edited yet
    warnings = [r for r in caplog.records if "over the 30 s ceiling" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"

    await settle(late)
    assert clock.slept == [600.0 - 1.5]  # the late edit waited for the platform (from the end), outside the answer
    assert sink.shown == ["first second third\n\n(shown late: this channel was rate-limited for 598 s)"]


async def test_without_late_edits_a_long_retry_after_reaches_the_caller_at_once(clock: Clock) -> None:
    sink = Sink(clock)

    async def deltas() -> AsyncIterator[str]:
        yield "Hello"
        sink.refuse_next = [600.0]

    with pytest.raises(TooLongToWait):
        await StreamedMessages(sink, limit=2000, limits=CEILING, clock=clock, sleep=clock.sleep).run(deltas())
    assert sum(clock.slept) < 30


async def test_a_long_retry_after_on_the_placeholder_posts_the_whole_answer_late(clock: Clock) -> None:
    sink = Sink(clock)
    late = LateEdits(sleep=clock.sleep)
    sink.refuse_next = [120.0]
    limits = ChannelLimits(channel="C1", late=late, max_wait_s=30.0)
    await StreamedMessages(sink, limit=2000, placeholder="…", limits=limits, clock=clock, sleep=clock.sleep).run(
        timed(["Hello", " world"], clock, 0.01)
    )
    assert sink.shown == []
    await settle(late)
    assert sink.shown[0].startswith("Hello world\n\n(shown late")


async def test_short_retry_afters_are_still_waited_out(clock: Clock) -> None:
    sink = Sink(clock)

    async def deltas() -> AsyncIterator[str]:
        yield "Hello"
        sink.refuse_next = [5.0, 10.0]

    await StreamedMessages(sink, limit=2000, limits=CEILING, clock=clock, sleep=clock.sleep).run(deltas())
    assert sink.shown == ["Hello"] and clock.slept[-2:] == [5.0, 10.0]


async def test_a_whole_message_over_the_ceiling_is_sent_late(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(clock)
    late = LateEdits(sleep=clock.sleep)
    limits = ChannelLimits(channel="C1", late=late, max_wait_s=30.0)
    sink.refuse_next = [600.0]
    await SinkReply(sink, limit=2000, interval_s=1.0, limits=limits).send("The first paragraph.\n\nThe second one.")
    assert sink.shown == [] and clock.slept == []  # the command's answer did not wait
    assert len([r for r in caplog.records if "over the 30 s ceiling" in r.getMessage()]) == 1
    await settle(late)
    note = "(shown late: this channel was rate-limited for 600 s)"
    assert sink.shown == [f"The first paragraph.\n\nThe second one.\n\n{note}"]


async def test_without_late_edits_a_whole_message_over_the_ceiling_raises_at_once() -> None:
    sink = Sink(Clock())
    sink.refuse_next = [600.0]
    with pytest.raises(TooLongToWait):
        await SinkReply(sink, limit=2000, interval_s=1.0, limits=CEILING).send("Saved.")


async def test_late_edits_are_bounded_and_dropped_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    late = LateEdits()
    ran: list[int] = []

    async def edit() -> None:
        ran.append(1)

    assert not late.schedule(7200, edit, "an answer")  # past the horizon: not kept
    assert late.schedule(60, edit, "an answer")
    await late.close()
    assert ran == [] and len(late) == 0
    assert "1 late edits dropped at shutdown" in caplog.text
