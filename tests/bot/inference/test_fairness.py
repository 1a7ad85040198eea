"""Fair sharing: no tenant holds more than its share of the model, and a flood from one tenant delays only that
tenant: another tenant's request takes the next free batch row, ahead of the flood's backlog."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bot.inference.fairness import FairQueue
from bot.inference.generator import Completion, GenerationTimeout, GeneratorBusy, TenantBusy
from bot.inference.local import LocalGenerator
from llm.checkpoints.load import load_checkpoint
from llm.decoding.sampling import SamplingParams
from tests.bot.inference.test_local import GREEDY, PROMPTS, paths, serving, slow_down, wait_until

__all__ = ["paths"]  # the fixture, shared with test_local

LONG = SamplingParams(max_new_tokens=8)


async def answer(generator: LocalGenerator, prompt: list[int], *, tenant: str) -> Completion:
    async with generator.stream(prompt, SamplingParams(max_new_tokens=2), timeout_s=30, tenant=tenant) as handle:
        async for _ in handle:
            pass
    return handle.result


def tenant_of(request: tuple[str, int]) -> str:
    return request[0]


def test_the_next_row_goes_to_the_tenant_with_fewest_running_then_the_one_served_longest_ago() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(tenant_of)
    for i in range(4):
        queue.push(("flood", i))
    running: Counter[str] = Counter()
    assert queue.pop(running) == ("flood", 0)
    running["flood"] += 1
    queue.push(("quiet", 0))
    assert queue.pop(running) == ("quiet", 0)  # fewer running: ahead of the flood's backlog
    running["quiet"] += 1
    queue.push(("other", 0))
    queue.push(("quiet", 1))
    assert queue.pop(running) == ("other", 0)  # nothing running yet
    running.clear()  # everything finished: equal footing, so the one served longest ago goes first
    assert queue.pop(running) == ("flood", 1)
    assert queue.pop(running) == ("quiet", 1)
    assert queue.pop(running) == ("flood", 2)
    assert queue.remove(("flood", 3)) and not queue.remove(("flood", 3))
    assert queue.pop(running) is None and len(queue) == 0


def test_within_one_tenant_requests_keep_their_order() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(tenant_of)
    for i in range(5):
        queue.push(("t", i))
    assert [queue.pop(Counter())[1] for _ in range(5)] == [0, 1, 2, 3, 4]  # type: ignore[index]


async def test_a_flood_from_one_tenant_does_not_delay_another_tenants_first_message(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.01)
    finished: list[str] = []

    async def ask(tenant: str, label: str) -> None:
        async with generator.stream(PROMPTS[0], LONG, tenant=tenant) as handle:
            async for _ in handle:
                pass
        finished.append(label)

    async with serving(checkpoint, max_batch=1, queue_size=16) as generator:
        flood = [asyncio.create_task(ask("discord:A", f"A{i}")) for i in range(6)]
        await wait_until(lambda: generator.stats().active == 1 and generator.stats().queue_depth == 5)
        other = asyncio.create_task(ask("discord:B", "B"))
        await asyncio.gather(*flood, other)
    # A's first request held the only row; B's message took the next one, ahead of A's backlog of five.
    assert finished.index("B") == 1, finished
    assert [label for label in finished if label != "B"] == [f"A{i}" for i in range(6)]  # A's own order kept


async def test_no_tenant_holds_more_than_its_share(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    async with (
        serving(checkpoint, max_batch=1, queue_size=8, tenant_max_active=2) as generator,
        generator.stream(PROMPTS[0], LONG, tenant="slack:T1"),
    ):
        async with generator.stream(PROMPTS[1], LONG, tenant="slack:T1"):
            with pytest.raises(TenantBusy):  # its share is two: refused at once, though the bot has room
                async with generator.stream(PROMPTS[2], GREEDY, tenant="slack:T1"):
                    pass
            # Another workspace is not affected by T1's flood.
            assert (await answer(generator, PROMPTS[2], tenant="slack:T2")).new_tokens == 2
        # T1 gave up its waiting request: that place in its share is free again.
        assert (await answer(generator, PROMPTS[3], tenant="slack:T1")).new_tokens == 2


async def test_the_whole_queue_still_bounds_everyone_together(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    async with (
        serving(checkpoint, max_batch=1, queue_size=1, tenant_max_active=5) as generator,
        AsyncExitStack() as stack,
    ):
        for tenant in ("a", "b"):
            await stack.enter_async_context(generator.stream(PROMPTS[0], LONG, tenant=tenant))
        with pytest.raises(GeneratorBusy) as refused:
            async with generator.stream(PROMPTS[1], GREEDY, tenant="c"):
                pass
        assert not isinstance(refused.value, TenantBusy)  # the bot is full, not c's share


async def test_a_request_waiting_for_a_row_still_meets_its_deadline(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    async with (
        serving(checkpoint, max_batch=1, queue_size=4) as generator,
        generator.stream(PROMPTS[0], SamplingParams(max_new_tokens=60), tenant="a"),
    ):
        with pytest.raises(GenerationTimeout, match=r"0\.2 seconds"):
            async with generator.stream(PROMPTS[1], GREEDY, timeout_s=0.2, tenant="b") as waiting:
                async for _ in waiting:
                    pass
        assert generator.stats().queue_depth == 0  # its place was freed
