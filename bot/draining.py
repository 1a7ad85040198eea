"""Letting work in flight finish at shutdown: used by both platform adapters (answers) and the scheduled jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def drain(tasks: Collection[asyncio.Task[Any]], grace_s: float, *, unwind_s: float | None = None) -> int:
    """Wait up to ``grace_s`` for ``tasks`` to finish, then cancel the rest and wait for them to unwind (up to
    ``unwind_s``; None waits until they have, so nothing they touch is closed under them). Returns how many were
    cut short. The tasks handle their own errors; a cancelled one is expected to unwind quickly."""
    if not tasks:
        return 0
    _, late = await asyncio.wait(set(tasks), timeout=grace_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=unwind_s)
    return len(late)
