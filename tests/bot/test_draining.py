"""drain: work in flight gets its grace period, then is cancelled, and the caller waits for it to unwind."""

from __future__ import annotations

import asyncio

from bot.draining import drain


async def test_work_that_finishes_within_the_grace_is_left_alone() -> None:
    quick = asyncio.create_task(asyncio.sleep(0.01, result="done"))
    assert await drain({quick}, grace_s=5) == 0
    assert quick.result() == "done"


async def test_late_work_is_cancelled_and_awaited_until_it_has_unwound() -> None:
    unwound = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits
            unwound.set()

    task = asyncio.create_task(slow())
    await asyncio.sleep(0)
    assert await drain({task}, grace_s=0.01) == 1
    assert task.cancelled() and unwound.is_set()


async def test_the_unwind_wait_can_be_bounded() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # does not unwind until released

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await asyncio.wait_for(drain({task}, grace_s=0.01, unwind_s=0.05), 5) == 1
    assert not task.done()
    release.set()
    await asyncio.gather(task, return_exceptions=True)


async def test_nothing_in_flight_returns_at_once() -> None:
    assert await drain(set(), grace_s=60) == 0
