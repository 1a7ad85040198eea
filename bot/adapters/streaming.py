"""Show a streamed answer on a chat platform by posting and editing messages, politely.

Platforms rate-limit edits (Discord and Slack both allow roughly one per second per message), so the text is
synced at most once per ``interval_s``: the messages are brought to what `split_message` makes of the text so far,
the last one with a cursor to show more is coming. A platform that answers 429 raises `RateLimited`; we wait its
``retry_after`` before the next edit. When the answer ends, one final sync removes the cursor, and it is retried
after a 429 until it lands: the final text arrives exactly once, in order, however the stream went. An adapter
supplies a `MessageSink` (how to post a message and how to edit one) and the channel's `ChannelLimits`: every call
spends from the channel's shared budget, and a Retry-After over the ceiling is left to `LateEdits` instead of being
waited out (see `bot.adapters.pacing`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from bot.adapters.pacing import DEFAULT_MAX_WAIT_S, ChannelLimits
from bot.adapters.splitting import split_message

log = logging.getLogger(__name__)

CURSOR = " …"
EMPTY_ANSWER = "(no answer: the model stopped before saying anything)"
# A placeholder or final edit that keeps getting 429s is given up after this many tries; the error reaches the caller.
FINAL_ATTEMPTS = 8
LATE_NOTE = "\n\n(shown late: this channel was rate-limited for {seconds:.0f} s)"

H = TypeVar("H")
T = TypeVar("T")


class RateLimited(Exception):  # noqa: N818 -- named for the HTTP status the platforms send
    """The platform asked us to wait ``retry_after`` seconds before the next call."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.2f} s")
        self.retry_after = max(0.0, retry_after)


class TooLongToWait(RateLimited):
    """A 429 whose Retry-After is over the ceiling: not waited out by the answer."""


class _NoBudget(Exception):  # noqa: N818 -- control flow: skip this interim edit
    """The channel's budget is spent for now; an interim sync is skipped (nothing was changed)."""


class MessageSink(Protocol[H]):
    """Where a streamed answer goes: one platform conversation (a channel, a thread, a reply chain)."""

    async def post(self, text: str) -> H:
        """Send a new message; return what `edit` needs to change it later."""

    async def edit(self, handle: H, text: str) -> None:
        """Replace the text of a message this sink posted."""


@dataclass
class _Posted(Generic[H]):
    handle: H
    text: str


class StreamedMessages(Generic[H]):
    def __init__(
        self,
        sink: MessageSink[H],
        *,
        limit: int,
        interval_s: float = 1.0,
        placeholder: str | None = None,
        limits: ChannelLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._limit = limit - len(CURSOR)  # the same cuts with or without the cursor, so no message is re-split
        self._interval = interval_s
        self._placeholder = placeholder
        self._limits = limits or ChannelLimits()
        self._clock = clock
        self._sleep = sleep
        self._posted: list[_Posted[H]] = []
        self._next_sync = 0.0
        self._blocked_until = 0.0  # after a Retry-After over the ceiling: no interim edits before this

    @property
    def messages(self) -> list[H]:
        """Handles of the messages posted so far, in order."""
        return [p.handle for p in self._posted]

    async def run(self, deltas: AsyncIterator[str]) -> str:
        """Consume ``deltas`` and show them; return the whole text. If the stream fails, what arrived is shown
        without the cursor and the error is raised."""
        if self._placeholder is not None:
            await self._post_placeholder(self._placeholder)
        text = ""
        try:
            async for delta in deltas:
                text += delta
                if text.strip() and self._clock() >= max(self._next_sync, self._blocked_until):
                    await self._interim(text)
        except BaseException:
            if text.strip() or self._posted:
                await self._final(text)
            raise
        await self._final(text)
        return text

    async def _post_placeholder(self, placeholder: str) -> None:
        # A busy channel answers the first post with a 429 as readily as an edit; nothing was posted, so retry.
        try:
            post = partial(paced, self._limits, partial(self._sink.post, placeholder))
            handle = await self._accepted(post, "placeholder")
        except TooLongToWait as e:
            self._blocked(e, "the placeholder")  # the answer is posted whole at the end, when the channel allows
            return
        self._posted.append(_Posted(handle, placeholder))
        self._next_sync = self._clock() + self._interval

    async def _interim(self, text: str) -> None:
        try:
            await self._sync(text, CURSOR, interim=True)
        except _NoBudget:  # other answers in this channel used its budget: try again an interval later, not per delta
            self._next_sync = self._clock() + self._interval
            return
        except RateLimited as e:
            if e.retry_after > self._limits.max_wait_s:
                self._blocked(e, "an interim edit")
                return
            log.info("edit rate-limited; next update in %.2f s", e.retry_after)
            self._next_sync = self._clock() + max(self._interval, e.retry_after)
            return
        self._next_sync = self._clock() + self._interval

    async def _final(self, text: str) -> None:
        shown = text if text.strip() else EMPTY_ANSWER
        blocked_for = self._blocked_until - self._clock()
        try:
            if blocked_for > self._limits.max_wait_s:
                raise TooLongToWait(blocked_for)
            await self._accepted(lambda: self._sync(shown, ""), "final edit", wait=self._next_sync - self._clock())
        except TooLongToWait as e:
            late = self._limits.late
            if late is None:
                raise
            self._blocked(e, "the final edit")
            note = LATE_NOTE.format(seconds=e.retry_after)
            late.schedule(e.retry_after, lambda: self._sync(shown + note, ""), f"the answer in {self._where}")

    def _blocked(self, error: RateLimited, what: str) -> None:
        if self._blocked_until <= self._clock():  # one line per answer, however many deltas follow
            log.warning(
                "%s in %s was rate-limited for %.0f s, over the %.0f s ceiling (SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S): "
                "the answer is shown once the platform allows it",
                what, self._where, error.retry_after, self._limits.max_wait_s,
            )  # fmt: skip
        self._blocked_until = self._clock() + error.retry_after

    @property
    def _where(self) -> str:
        return f"channel {self._limits.channel}" if self._limits.channel else "a channel"

    async def _accepted(self, call: Callable[[], Awaitable[T]], what: str, *, wait: float = 0.0) -> T:
        return await until_accepted(
            call, what, attempts=FINAL_ATTEMPTS, wait=wait, sleep=self._sleep, max_wait_s=self._limits.max_wait_s
        )

    async def _sync(self, text: str, cursor: str, *, interim: bool = False) -> None:
        """Post or edit so the messages show ``text`` (plus ``cursor`` on the last). Each message already showing
        the right text is left alone, so a retry after a 429 repeats only what did not land."""
        chunks = split_message(text, self._limit)
        for i, chunk in enumerate(chunks):
            shown = chunk + cursor if i == len(chunks) - 1 else chunk
            if i < len(self._posted):
                if self._posted[i].text != shown:
                    await paced(self._limits, partial(self._sink.edit, self._posted[i].handle, shown), interim=interim)
                    self._posted[i].text = shown
            else:
                posted = await paced(self._limits, partial(self._sink.post, shown), interim=interim)
                self._posted.append(_Posted(posted, shown))


async def paced(limits: ChannelLimits, call: Callable[[], Awaitable[T]], *, interim: bool = False) -> T:
    """``call()`` once the channel's write budget allows it; an interim call that would have to wait is skipped
    (`_NoBudget`: nothing was sent, the next delta tries again)."""
    if limits.pacer is not None:
        if interim and not limits.pacer.try_take(limits.channel):
            raise _NoBudget
        if not interim:
            await limits.pacer.take(limits.channel)
    return await call()


async def until_accepted(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int = FINAL_ATTEMPTS,
    wait: float = 0.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> T:
    """``call()`` after ``wait`` seconds, repeated after each 429 as long as the platform asks (a refused call
    changed nothing, so repeating it cannot show anything twice); after ``attempts`` refusals the last 429 reaches
    the caller. A Retry-After over ``max_wait_s`` is not waited out: it raises `TooLongToWait` at once."""
    for attempt in range(1, attempts + 1):
        if wait > 0:
            await sleep(wait)
        try:
            return await call()
        except RateLimited as e:
            if e.retry_after > max_wait_s:
                raise TooLongToWait(e.retry_after) from e
            if attempt == attempts:
                raise
            wait = e.retry_after
            log.info("%s rate-limited; retrying in %.2f s", what, wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


class SinkReply(Generic[H]):
    """The core's `Reply` over a `MessageSink`: whole messages split at ``limit``, streams shown by
    `StreamedMessages` (edited at most once per ``interval_s``), every call within the channel's ``limits``."""

    def __init__(
        self, sink: MessageSink[H], *, limit: int, interval_s: float, limits: ChannelLimits | None = None
    ) -> None:
        self._sink = sink
        self._limit = limit
        self._interval = interval_s
        self._limits = limits or ChannelLimits()

    async def send(self, text: str) -> None:
        await send_whole(self._sink.post, text, self._limit, self._limits)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        streamed = StreamedMessages(self._sink, limit=self._limit, interval_s=self._interval, limits=self._limits)
        return await streamed.run(deltas)


async def send_whole(
    post: Callable[[str], Awaitable[object]],
    text: str,
    limit: int,
    limits: ChannelLimits,
    attempts: int = FINAL_ATTEMPTS,
) -> None:
    """Post ``text`` as whole messages of at most ``limit`` characters, in order, each within the channel's budget
    and retried after short 429s. After a Retry-After over the ceiling the rest is posted late, with a note, by
    `LateEdits` (without them, `TooLongToWait` reaches the caller)."""
    chunks = split_message(text, limit)
    for i, chunk in enumerate(chunks):
        try:
            call = partial(paced, limits, partial(post, chunk))
            await until_accepted(call, "post", attempts=attempts, max_wait_s=limits.max_wait_s)
        except TooLongToWait as e:
            if limits.late is None:
                raise
            log.warning(
                "a message in %s was rate-limited for %.0f s, over the %.0f s ceiling "
                "(SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S): it is sent once the platform allows it",
                limits.channel or "a channel", e.retry_after, limits.max_wait_s,
            )  # fmt: skip
            rest = "\n\n".join(chunks[i:]) + LATE_NOTE.format(seconds=e.retry_after)
            once = ChannelLimits(limits.channel, limits.pacer, None, limits.max_wait_s)  # late is tried once
            limits.late.schedule(
                e.retry_after,
                lambda rest=rest, once=once: send_whole(post, rest, limit, once),
                f"a message in {limits.channel}",
            )
            return
