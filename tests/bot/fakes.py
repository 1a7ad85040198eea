"""Test doubles for the service core: a generator that streams a scripted answer, a reply that records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from bot.inference.generator import Completion, GenerationHandle, GeneratorBusy, GeneratorStats, ModelInfo, ReloadFailed
from llm.decoding.sampling import SamplingParams

SHA = "ab" * 32


class FakeGenerator:
    """Answers every prompt with ``answer`` in a few deltas; records the prompts and settings it was given.

    Platform tests slow it down: ``delay_s`` between deltas, and ``hold`` (when set) stops the answer halfway until
    the test sets the event, to act while an answer is being streamed."""

    def __init__(self, answer: str = " The answer is 4.", *, context_length: int = 1024, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.hold: asyncio.Event | None = None
        self.prompts: list[list[int]] = []
        self.tenants: list[str] = []  # whose share each request counted against
        self.params: list[SamplingParams] = []
        self.busy = False
        self.fail_with: BaseException | None = None
        self.reload_error: str | None = None
        self.reload_hold: asyncio.Event | None = None  # when set, a reload waits for it (a slow checkpoint)
        self.reloads_running = 0
        self.recent_tokens_per_second = 12.5
        self.most_reloads_at_once = 0
        self._context_length = context_length
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
        self._info = ModelInfo("fake.safetensors", SHA, 1234, "cpu", "fp32", context_length, datetime.now(UTC))

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def info(self) -> ModelInfo:
        return self._info

    def stats(self) -> GeneratorStats:
        return GeneratorStats(queue_depth=0, active=0, recent_tokens_per_second=self.recent_tokens_per_second)

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, *, timeout_s: float | None = None, tenant: str = ""
    ):
        def submit(handle: GenerationHandle) -> None:
            if self.busy:
                raise GeneratorBusy("queue full")
            self.tenants.append(tenant)
            self.prompts.append(list(prompt_ids))
            self.params.append(params)
            if self.delay_s or self.hold is not None:
                task = asyncio.get_running_loop().create_task(self._play_slowly(handle))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                asyncio.get_running_loop().call_soon(self._play, handle)

        return GenerationHandle(submit, lambda handle: None)

    def _play(self, handle: GenerationHandle) -> None:
        if self.fail_with is not None:
            handle.fail(self.fail_with)
            return
        for delta in self._deltas():
            handle.feed(delta)
        self._finish(handle)

    async def _play_slowly(self, handle: GenerationHandle) -> None:
        deltas = self._deltas()
        for i, delta in enumerate(deltas):
            if self.hold is not None and i == len(deltas) // 2:
                await self.hold.wait()
            await asyncio.sleep(self.delay_s)
            handle.feed(delta)
        self._finish(handle)

    def _deltas(self) -> list[str]:
        words = self.answer.split(" ")
        return [word if i == 0 else " " + word for i, word in enumerate(words)]

    def _finish(self, handle: GenerationHandle) -> None:
        info = self._info
        handle.finish(Completion(self.answer, (1, 2, 3), "eot", info.name, info.sha256, 0.01, 0.001))

    async def reload(self, path: Path, name: str) -> ModelInfo:
        self.reloads_running += 1
        self.most_reloads_at_once = max(self.most_reloads_at_once, self.reloads_running)
        try:
            if self.reload_hold is not None:
                await self.reload_hold.wait()
        finally:
            self.reloads_running -= 1
        if self.reload_error:
            raise ReloadFailed(self.reload_error)
        self._info = ModelInfo(name, "cd" * 32, 999, "cpu", "fp32", self._context_length, datetime.now(UTC))
        return self._info

    async def start(self) -> None:
        return None

    async def close(self, grace_s: float) -> None:
        return None


class RecordingReply:
    """Keeps everything the core sent: whole messages and streamed answers (as the joined text)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.streamed: list[str] = []
        self.deltas: list[list[str]] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        got = [d async for d in deltas]
        self.deltas.append(got)
        self.streamed.append("".join(got))
        return self.streamed[-1]

    @property
    def everything(self) -> str:
        return "\n".join(self.sent + self.streamed)
