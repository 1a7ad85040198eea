"""How often, and how late, we may call a platform for one channel.

Platforms limit writes per channel, not per message: Discord allows 5 message creates or edits per 5 s in a channel,
Slack about one `chat.postMessage` / `chat.update` a second. Six answers streaming at once into one channel must share
that budget, so every post and edit of a streamed answer spends from `ChannelPacer`, a sliding window per channel
that the adapter owns. Interim edits are skipped when the channel's budget is spent (the next one shows the newer
text anyway); the final edit waits for its turn.

A 429 whose Retry-After is longer than the ceiling (``SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S``) is not waited out by the
answer: the answer's task ends, and `LateEdits` shows its final text once the platform allows it again, so no message
is left at "…" and no answer holds a queue slot or a shutdown for minutes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A late edit further away than this is not kept: the process may well be restarted before, and a platform asking for
# an hour of silence has bigger trouble to report (the log line says so).
LATE_EDIT_HORIZON_S = 3600.0
LATE_EDITS_MAX = 1000  # pending late edits kept at once: memory stays bounded in a storm of 429s
DEFAULT_MAX_WAIT_S = 30.0  # the longest Retry-After an answer waits out itself (SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S)


@dataclass(frozen=True)
class Pace:
    """At most ``calls`` writes per ``per_s`` seconds in one channel."""

    calls: int
    per_s: float

    def __post_init__(self) -> None:
        if self.calls < 1 or self.per_s <= 0:
            raise ValueError(f"a pace needs at least one call per positive period, got {self.calls}/{self.per_s} s")


DISCORD_PACE = Pace(calls=5, per_s=5.0)  # Discord's documented per-channel limit on message creates and edits
SLACK_PACE = Pace(calls=1, per_s=1.0)  # Slack: about one message write a second in a channel


class ChannelPacer:
    """At most ``pace.calls`` writes in any ``pace.per_s`` seconds in each channel, shared by every answer the adapter
    streams. A sliding window, not a token bucket: a bucket refilling at calls/per_s would let a burst plus the
    refill exceed what the platform counts in one window."""

    def __init__(
        self,
        pace: Pace,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pace = pace
        self._clock = clock
        self._sleep = sleep
        self._recent: dict[str, deque[float]] = {}  # channel -> when its writes in the current window were made

    def try_take(self, channel: str) -> bool:
        """Spend a write if the channel has one now; False (nothing spent) if not."""
        now = self._clock()
        recent = self._window(channel, now)
        if len(recent) >= self._pace.calls:
            return False
        recent.append(now)
        return True

    async def take(self, channel: str) -> None:
        """Spend a write, waiting until the channel has one."""
        while not self.try_take(channel):
            oldest = self._recent[channel][0]
            await self._sleep(max(oldest + self._pace.per_s - self._clock(), 0.001))

    def _window(self, channel: str, now: float) -> deque[float]:
        if len(self._recent) > 1000:  # channels quiet for a whole window carry no information: forget them
            for quiet in [c for c, times in self._recent.items() if times[-1] <= now - self._pace.per_s]:
                del self._recent[quiet]
        recent = self._recent.setdefault(channel, deque())
        while recent and recent[0] <= now - self._pace.per_s:
            recent.popleft()
        return recent


class LateEdits:
    """Final edits that must wait longer than an answer may: each runs once after its delay, in a task owned here.

    The adapter closes it at shutdown; edits still waiting then are dropped (and counted in the log)."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def schedule(self, delay_s: float, edit: Callable[[], Awaitable[object]], what: str) -> bool:
        """Run ``edit`` after ``delay_s`` seconds; False (nothing scheduled) past the horizon or the bound."""
        if delay_s > LATE_EDIT_HORIZON_S or len(self._tasks) >= LATE_EDITS_MAX:
            log.warning("%s dropped: the platform asks for %.0f s of silence, more than we wait", what, delay_s)
            return False
        task = asyncio.get_running_loop().create_task(self._run(delay_s, edit, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, delay_s: float, edit: Callable[[], Awaitable[object]], what: str) -> None:
        await self._sleep(delay_s)
        try:
            await edit()
        except Exception as e:  # the platform still refuses: nothing more to try, and nobody is waiting
            log.warning("%s failed after waiting %.0f s: %s", what, delay_s, e)

    async def close(self) -> None:
        if self._tasks:
            log.warning("%d late edits dropped at shutdown", len(self._tasks))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class ChannelLimits:
    """How one answer shares its channel's rate limits: the adapter's pacer and late edits, keyed by ``channel``."""

    channel: str = ""
    pacer: ChannelPacer | None = None
    late: LateEdits | None = None  # None: a Retry-After over the ceiling reaches the caller as `TooLongToWait`
    max_wait_s: float = DEFAULT_MAX_WAIT_S


class PlatformLimits:
    """What an adapter owns of its platform's rate limits: a write budget per channel, the late edits, the ceiling.
    Every reply it makes takes its channel's `ChannelLimits` from here."""

    def __init__(self, pace: Pace, max_wait_s: float = DEFAULT_MAX_WAIT_S, late: LateEdits | None = None) -> None:
        """``late``: where answers rate-limited past the ceiling are finished (tests pass one on virtual time)."""
        self._pacer = ChannelPacer(pace)
        self._late = late if late is not None else LateEdits()  # not `or`: an empty LateEdits is falsy
        self._max_wait_s = max_wait_s

    def channel(self, key: str) -> ChannelLimits:
        return ChannelLimits(key, self._pacer, self._late, self._max_wait_s)

    async def close(self) -> None:
        await self._late.close()
