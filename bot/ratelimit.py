"""Per-user rate limiting: a sliding window of recent requests, so one user cannot monopolise the model."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable

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
