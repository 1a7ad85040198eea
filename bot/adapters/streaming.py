"""Show a streamed answer on a chat platform by posting and editing messages, politely.

Platforms rate-limit edits (Discord and Slack both allow roughly one per second per message), so the text is
synced at most once per ``interval_s``: the messages are brought to what `split_message` makes of the text so far,
the last one with a cursor to show more is coming. A platform that answers 429 raises `RateLimited`; we wait its
``retry_after`` before the next edit. When the answer ends, one final sync removes the cursor, and it is retried
after a 429 until it lands: the final text arrives exactly once, in order, however the stream went. An adapter
supplies only a `MessageSink`: how to post a message and how to edit one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bot.adapters.splitting import split_message

log = logging.getLogger(__name__)

CURSOR = " …"
EMPTY_ANSWER = "(no answer: the model stopped before saying anything)"
# A placeholder or final edit that keeps getting 429s is given up after this many tries; the error reaches the caller.
FINAL_ATTEMPTS = 8

H = TypeVar("H")
T = TypeVar("T")


class RateLimited(Exception):  # noqa: N818 -- named for the HTTP status the platforms send
    """The platform asked us to wait ``retry_after`` seconds before the next call."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.2f} s")
        self.retry_after = max(0.0, retry_after)


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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._limit = limit - len(CURSOR)  # the same cuts with or without the cursor, so no message is re-split
        self._interval = interval_s
        self._placeholder = placeholder
        self._clock = clock
        self._sleep = sleep
        self._posted: list[_Posted[H]] = []
        self._next_sync = 0.0

    @property
    def messages(self) -> list[H]:
        """Handles of the messages posted so far, in order."""
        return [p.handle for p in self._posted]

    async def run(self, deltas: AsyncIterator[str]) -> str:
        """Consume ``deltas`` and show them; return the whole text. If the stream fails, what arrived is shown
        without the cursor and the error is raised."""
        if self._placeholder is not None:
            placeholder = self._placeholder
            # A busy channel answers the first post with a 429 as readily as an edit; nothing was posted, so retry.
            handle = await self._accepted(lambda: self._sink.post(placeholder), "placeholder")
            self._posted.append(_Posted(handle, placeholder))
            self._next_sync = self._clock() + self._interval
        text = ""
        try:
            async for delta in deltas:
                text += delta
                if text.strip() and self._clock() >= self._next_sync:
                    await self._interim(text)
        except BaseException:
            if text.strip() or self._posted:
                await self._final(text)
            raise
        await self._final(text)
        return text

    async def _interim(self, text: str) -> None:
        try:
            await self._sync(text, CURSOR)
        except RateLimited as e:
            log.info("edit rate-limited; next update in %.2f s", e.retry_after)
            self._next_sync = self._clock() + max(self._interval, e.retry_after)
            return
        self._next_sync = self._clock() + self._interval

    async def _final(self, text: str) -> None:
        shown = text if text.strip() else EMPTY_ANSWER
        await self._accepted(lambda: self._sync(shown, ""), "final edit", wait=self._next_sync - self._clock())

    async def _accepted(self, call: Callable[[], Awaitable[T]], what: str, *, wait: float = 0.0) -> T:
        return await until_accepted(call, what, attempts=FINAL_ATTEMPTS, wait=wait, sleep=self._sleep)

    async def _sync(self, text: str, cursor: str) -> None:
        """Post or edit so the messages show ``text`` (plus ``cursor`` on the last). Each message already showing
        the right text is left alone, so a retry after a 429 repeats only what did not land."""
        chunks = split_message(text, self._limit)
        for i, chunk in enumerate(chunks):
            shown = chunk + cursor if i == len(chunks) - 1 else chunk
            if i < len(self._posted):
                if self._posted[i].text != shown:
                    await self._sink.edit(self._posted[i].handle, shown)
                    self._posted[i].text = shown
            else:
                self._posted.append(_Posted(await self._sink.post(shown), shown))


async def until_accepted(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int = FINAL_ATTEMPTS,
    wait: float = 0.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``call()`` after ``wait`` seconds, repeated after each 429 as long as the platform asks (a refused call
    changed nothing, so repeating it cannot show anything twice); after ``attempts`` refusals the last 429 reaches
    the caller."""
    for attempt in range(1, attempts + 1):
        if wait > 0:
            await sleep(wait)
        try:
            return await call()
        except RateLimited as e:
            if attempt == attempts:
                raise
            wait = e.retry_after
            log.info("%s rate-limited; retrying in %.2f s", what, wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


class SinkReply(Generic[H]):
    """The core's `Reply` over a `MessageSink`: whole messages split at ``limit``, streams shown by
    `StreamedMessages` (edited at most once per ``interval_s``)."""

    def __init__(self, sink: MessageSink[H], *, limit: int, interval_s: float) -> None:
        self._sink = sink
        self._limit = limit
        self._interval = interval_s

    async def send(self, text: str) -> None:
        for chunk in split_message(text, self._limit):
            await self._sink.post(chunk)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        return await StreamedMessages(self._sink, limit=self._limit, interval_s=self._interval).run(deltas)
