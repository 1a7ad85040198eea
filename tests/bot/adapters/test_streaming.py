"""StreamedMessages: a streamed answer is shown by posting and editing messages at most once per interval, honouring
a platform's 429, and ends with the exact text, in order, exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise

import pytest

from bot.adapters.streaming import CURSOR, EMPTY_ANSWER, RateLimited, SinkReply, StreamedMessages


class Clock:
    """Virtual time: sleeping advances it, so throttling is tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Sink:
    """A platform channel: numbered messages, a log of every call, and 429s on demand."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.messages: dict[int, str] = {}
        self.calls: list[tuple[str, int, str, float]] = []
        self.refuse_next: list[float] = []  # retry_after of the next calls to refuse

    async def post(self, text: str) -> int:
        self._maybe_refuse()
        handle = len(self.messages)
        self.messages[handle] = text
        self.calls.append(("post", handle, text, self.clock.now))
        return handle

    async def edit(self, handle: int, text: str) -> None:
        self._maybe_refuse()
        self.messages[handle] = text
        self.calls.append(("edit", handle, text, self.clock.now))

    def _maybe_refuse(self) -> None:
        if self.refuse_next:
            raise RateLimited(self.refuse_next.pop(0))

    @property
    def shown(self) -> list[str]:
        return [self.messages[i] for i in sorted(self.messages)]


async def timed(deltas: list[str], clock: Clock, every: float) -> AsyncIterator[str]:
    for delta in deltas:
        clock.now += every
        yield delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_edits_are_throttled_and_the_final_text_has_no_cursor(clock: Clock) -> None:
    sink = Sink(clock)
    words = [f"w{i} " for i in range(40)]  # 40 deltas over 4 virtual seconds
    shown = await StreamedMessages(sink, limit=2000, interval_s=1.0, clock=clock, sleep=clock.sleep).run(
        timed(words, clock, 0.1)
    )
    assert shown == "".join(words)
    assert sink.shown == ["".join(words).strip()]
    times = [t for _, _, _, t in sink.calls]
    assert len(sink.calls) <= 6  # one post, about one edit a second, one final edit
    assert all(b - a >= 1.0 - 1e-9 for a, b in pairwise(times[:-1]))  # interim edits
    assert all(text.endswith(CURSOR) for _, _, text, _ in sink.calls[:-1])


async def test_a_placeholder_is_posted_before_the_first_word(clock: Clock) -> None:
    sink = Sink(clock)
    await StreamedMessages(sink, limit=2000, placeholder="…", clock=clock, sleep=clock.sleep).run(
        timed(["Hello", " world"], clock, 0.01)
    )
    assert sink.calls[0][:3] == ("post", 0, "…")
    assert sink.shown == ["Hello world"]


async def test_a_429_on_the_placeholder_is_waited_out_and_it_is_posted_once(clock: Clock) -> None:
    sink = Sink(clock)
    sink.refuse_next = [2.0]
    await StreamedMessages(sink, limit=2000, placeholder="…", clock=clock, sleep=clock.sleep).run(
        timed(["Hello"], clock, 0.01)
    )
    assert clock.slept[0] == 2.0 and sink.calls[0][:3] == ("post", 0, "…")
    assert sink.shown == ["Hello"]


async def test_a_long_answer_becomes_ordered_messages_within_the_limit(clock: Clock) -> None:
    sink = Sink(clock)
    sentences = [f"Sentence {i} is here. " for i in range(300)]
    await StreamedMessages(sink, limit=2000, clock=clock, sleep=clock.sleep).run(timed(sentences, clock, 0.05))
    assert len(sink.shown) >= 3
    assert all(len(m) <= 2000 for m in sink.shown)
    assert " ".join(sink.shown) == "".join(sentences).strip()
    posts = [handle for kind, handle, _, _ in sink.calls if kind == "post"]
    assert posts == sorted(posts)


async def test_a_429_delays_the_next_edit_and_the_final_text_still_arrives_once(clock: Clock) -> None:
    sink = Sink(clock)
    streamer = StreamedMessages(sink, limit=2000, interval_s=1.0, clock=clock, sleep=clock.sleep)
    sink.refuse_next = []

    async def deltas() -> AsyncIterator[str]:
        yield "first "
        clock.now += 1.5
        sink.refuse_next = [3.0]  # the next edit is refused: wait three seconds
        yield "second "
        clock.now += 1.0  # within the retry_after: no edit may be tried
        yield "third"

    await streamer.run(deltas())
    assert sink.shown == ["first second third"]
    final_edits = [c for c in sink.calls if c[2] == "first second third"]
    assert len(final_edits) == 1
    assert final_edits[0][3] >= 1.5 + 3.0  # the final edit waited out the retry_after


async def test_the_final_edit_is_retried_after_429s(clock: Clock) -> None:
    sink = Sink(clock)

    async def deltas() -> AsyncIterator[str]:
        yield "Hello"
        sink.refuse_next = [0.5, 0.7]

    await StreamedMessages(sink, limit=2000, clock=clock, sleep=clock.sleep).run(deltas())
    assert sink.shown == ["Hello"]
    assert clock.slept[-2:] == [0.5, 0.7]


async def test_an_empty_answer_says_so_instead_of_sending_nothing(clock: Clock) -> None:
    sink = Sink(clock)
    await StreamedMessages(sink, limit=2000, clock=clock, sleep=clock.sleep).run(timed(["", " "], clock, 0.1))
    assert sink.shown == [EMPTY_ANSWER]


async def test_a_failing_stream_leaves_what_arrived_without_the_cursor(clock: Clock) -> None:
    sink = Sink(clock)

    async def deltas() -> AsyncIterator[str]:
        yield "Partial answer"
        raise TimeoutError("too slow")

    with pytest.raises(TimeoutError):
        await StreamedMessages(sink, limit=2000, clock=clock, sleep=clock.sleep).run(deltas())
    assert sink.shown == ["Partial answer"]


async def test_a_sink_reply_sends_whole_messages_split_at_the_limit_and_streams_through_streamed_messages() -> None:
    sink = Sink(Clock())
    reply = SinkReply(sink, limit=30, interval_s=0.0)
    await reply.send("The first paragraph.\n\nThe second one, a bit longer.")
    assert sink.shown == ["The first paragraph.", "The second one, a bit longer."]
    assert [call[0] for call in sink.calls] == ["post", "post"]

    async def deltas() -> AsyncIterator[str]:
        for word in ("Streamed ", "text ", "ends."):
            yield word

    assert await reply.stream(deltas()) == "Streamed text ends."
    assert sink.shown[2:] == ["Streamed text ends."]  # the cursor is gone at the end
