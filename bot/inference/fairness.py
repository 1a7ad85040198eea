"""Fair sharing of the model between tenants (guilds, workspaces, DM users): who gets the next free batch row.

Requests wait here, one FIFO per tenant, until the engine has a free row. The next row goes to the waiting tenant
with the fewest requests running, and among equals to the one served longest ago, so a tenant that floods the bot
delays itself: another tenant's first message takes the next free row, ahead of the flood's backlog. (Plain round
robin over tenants in arrival order would still serve one more of the flood first.) The per-tenant cap on requests
accepted at once is the worker's, at `submit`; this decides only the order.

Owned by the inference worker's thread; not thread-safe.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


class FairQueue(Generic[R]):
    """Waiting requests by tenant; `pop` picks the tenant whose turn it is."""

    def __init__(self, tenant_of: Callable[[R], str]) -> None:
        self._tenant_of = tenant_of
        self._queues: dict[str, deque[R]] = {}
        self._turns = itertools.count()
        self._last_served: dict[str, int] = {}  # when each tenant with requests waiting or running last got a row

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:  # checked every decode step: a tenant's queue goes as soon as it is empty
        return bool(self._queues)

    def __iter__(self) -> Iterator[R]:
        for queue in self._queues.values():
            yield from queue

    def push(self, request: R) -> None:
        self._queues.setdefault(self._tenant_of(request), deque()).append(request)

    def pop(self, running: Counter[str]) -> R | None:
        """The next request to run, given how many each tenant has running now; None when nothing waits."""
        if not self._queues:
            return None
        tenant = min(self._queues, key=lambda t: (running[t], self._last_served.get(t, -1)))
        queue = self._queues[tenant]
        request = queue.popleft()
        if not queue:
            del self._queues[tenant]
        self._last_served[tenant] = next(self._turns)
        # A tenant with nothing waiting or running starts afresh next time: the table stays as small as the traffic.
        for gone in [t for t in self._last_served if t not in self._queues and not running[t] and t != tenant]:
            del self._last_served[gone]
        return request

    def remove(self, request: R) -> bool:
        """Take a waiting request out (cancelled, expired); False if it is not waiting here."""
        tenant = self._tenant_of(request)
        queue = self._queues.get(tenant)
        if queue is None or request not in queue:
            return False
        queue.remove(request)
        if not queue:
            del self._queues[tenant]
        return True

    def take_all(self) -> list[R]:
        """Everything waiting, in arrival order per tenant; the queue is left empty."""
        everything = list(self)
        self._queues.clear()
        self._last_served.clear()
        return everything
