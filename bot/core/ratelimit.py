"""Per-user rate limiting: a sliding window of recent requests, so one user cannot monopolise the model."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable

from bot.core.auth import AdminPolicy
from bot.core.messages import Incoming

log = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, window_s: float = 60.0):
        if per_minute < 1:
            raise ValueError(f"rate limit must allow at least 1 request per minute, got {per_minute}")
        self._limit = per_minute
        self._window = window_s
        self._clock = clock
        self._seen: dict[Hashable, deque[float]] = {}

    def check(self, key: Hashable) -> float:
        """0 if ``key`` may go ahead now (and count it); otherwise the seconds until it may."""
        now = self._clock()
        times = self._seen.setdefault(key, deque())
        while times and now - times[0] >= self._window:
            times.popleft()
        if len(times) >= self._limit:
            return self._window - (now - times[0])
        times.append(now)
        self._forget_idle(now)
        return 0.0

    def refund(self, key: Hashable) -> None:
        """Take back the newest request `check` counted for ``key`` (it turned out not to be a new request)."""
        times = self._seen.get(key)
        if times:
            times.pop()

    def _forget_idle(self, now: float) -> None:
        # Bounded memory in a busy server: drop users whose whole window has passed (checked rarely).
        if len(self._seen) > 10_000:
            idle = [k for k, t in self._seen.items() if not t or now - t[-1] >= self._window]
            for k in idle:
                del self._seen[k]


class SenderLimits:
    """The rate limit as the core applies it: per user of a platform, and never to the person running the bot (the
    terminal's user, the bot application's owners)."""

    def __init__(self, limiter: RateLimiter, admins: AdminPolicy) -> None:
        self._limiter = limiter
        self._admins = admins

    def wait(self, incoming: Incoming) -> float:
        """0 if the sender may go ahead now (and count the request), else the seconds to wait."""
        return self._limiter.check(_sender(incoming)) if self._counted(incoming) else 0.0

    def refund(self, incoming: Incoming) -> None:
        """Take back the request `wait` counted (a redelivery, or a message that could not be stored)."""
        if self._counted(incoming):
            self._limiter.refund(_sender(incoming))

    def _counted(self, incoming: Incoming) -> bool:
        return not self._admins.is_operator(incoming.platform, is_owner=incoming.author_is_owner)


def wait_message(wait_s: float) -> str:
    return f"You're sending messages faster than I can answer; please wait {wait_s:.0f} s and send it again."


def _sender(incoming: Incoming) -> tuple[str, str]:
    return incoming.platform, incoming.author_id
