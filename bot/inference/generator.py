"""What the rest of the bot sees of text generation: the `Generator` protocol, its handle, results and errors.

Nothing here knows how text is made: `bot.inference.local.LocalGenerator` runs the model in-process, a test's fake
generator (or a later remote one) feeds a `GenerationHandle` the same way. No torch import, so the conversation
layer and its tests stay light.

Usage::

    async with generator.stream(prompt_ids, params, timeout_s=60, tenant="discord:1234") as handle:
        async for delta in handle:
            ...
    handle.result  # Completion: text, token ids, finish reason, the model it ran on, seconds
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llm.decoding.sampling import SamplingParams

log = logging.getLogger(__name__)

# The exception names below are the service's agreed vocabulary (a user is told "busy", "timed out", ...), so they
# keep it instead of ruff's "...Error" suffix.


class GeneratorBusy(Exception):  # noqa: N818
    """Too many requests are already waiting; tell the user at once to try again in a moment."""


class TenantBusy(GeneratorBusy):
    """This tenant (guild, workspace) already has its share of the model's requests in progress; others still have
    room. Tell the user to try again in a moment."""


class GeneratorClosed(GeneratorBusy):
    """The generator is shutting down and takes no new requests."""


class GenerationTimeout(Exception):  # noqa: N818
    """The answer did not finish before the request's deadline; its slot has been freed."""


class GenerationFailed(Exception):  # noqa: N818
    """The model raised while generating; the message is safe to show and the details are in the log."""


class ReloadFailed(Exception):  # noqa: N818
    """A new checkpoint was refused; the message says why, and the old model keeps serving."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the admin called it (the checkpoint's file name)
    sha256: str  # of the weights file
    parameters: int  # counted before any quantization
    device: str
    precision: str  # "fp32" | "bf16" | "int8"
    context_length: int
    loaded_at: datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class GeneratorStats:
    queue_depth: int  # accepted requests still waiting for a place in the batch
    active: int  # requests generating right now
    recent_tokens_per_second: float  # over the last few seconds, every request together


@dataclass(frozen=True)
class Completion:
    text: str  # everything streamed, without end-of-text or a stop string
    token_ids: tuple[int, ...]
    finish_reason: str  # "eot" | "stop" | "length" | "context"
    model_name: str  # the model this answer ran on (a reload does not move a running request)
    model_sha256: str
    seconds: float  # from acceptance to the last token, queueing included: what the user waited
    first_token_seconds: float | None  # from acceptance to the first generated token

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


class GenerationHandle:
    """One request's stream. Enter it to submit, iterate it for text deltas, read `result` when done.

    Leaving the ``async with`` before the end (the consumer stopped, its task was cancelled) cancels the request
    and frees its place. A generator implementation creates handles with its own ``submit``/``cancel`` callables
    and feeds them on the event loop's thread with `feed`, `finish` and `fail`.
    """

    def __init__(self, submit: Callable[[GenerationHandle], None], cancel: Callable[[GenerationHandle], None]) -> None:
        self._submit, self._cancel = submit, cancel
        self._queue: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        self._parts: list[str] = []
        self._result: Completion | None = None
        self._error: BaseException | None = None
        self._entered = False
        self._left_early = False

    async def __aenter__(self) -> GenerationHandle:
        if self._entered:
            raise RuntimeError("a generation handle can be entered once; call stream() again for a new request")
        self._submit(self)  # raises GeneratorBusy at once when the queue is full
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.done:
            self._left_early = True
            self._cancel(self)

    def __aiter__(self) -> GenerationHandle:
        return self

    async def __anext__(self) -> str:
        if not self._entered:
            raise RuntimeError("enter the handle first: `async with generator.stream(...) as handle`")
        if self._queue.empty() and self.done:  # iterated again after the end: the same end again
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, str):
            return item
        if isinstance(item, Completion):
            raise StopAsyncIteration
        raise item

    @property
    def done(self) -> bool:
        """Finished, failed, or left early by its consumer."""
        return self._result is not None or self._error is not None or self._left_early

    @property
    def text(self) -> str:
        """The text streamed so far (all of it once done); useful to keep a partial answer."""
        return "".join(self._parts)

    @property
    def result(self) -> Completion:
        if self._result is None:
            state = "cancelled" if self._left_early else repr(self._error) if self._error else "still running"
            raise RuntimeError(f"the generation has no result ({state})")
        return self._result

    # -------------------------------------------------------------------- producer side (event-loop thread)

    def feed(self, delta: str) -> None:
        if not self.done:
            self._parts.append(delta)
            self._queue.put_nowait(delta)

    def finish(self, completion: Completion) -> None:
        if not self.done:
            self._result = completion
            self._queue.put_nowait(completion)

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self._queue.put_nowait(error)


class Generator(Protocol):
    """Streams text for token ids; the conversation layer's only way to the model."""

    @property
    def context_length(self) -> int: ...

    @property
    def info(self) -> ModelInfo: ...

    def stats(self) -> GeneratorStats: ...

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, *, timeout_s: float | None = None, tenant: str = ""
    ) -> GenerationHandle:
        """``tenant`` (platform:guild) is whose request it is: no tenant takes more than its share of the model."""
        ...

    async def reload(self, path: Path, name: str) -> ModelInfo:
        """Swap in the checkpoint at ``path``; raises `ReloadFailed` (a generator that cannot reload always does)."""
        ...

    async def start(self) -> None: ...

    async def close(self, grace_s: float) -> None: ...
