"""In-process generation: `LocalGenerator` runs the model on ONE worker thread, never on the event loop.

The worker runs `llm.engine.Engine` (continuous batching: every active request advances in the same forward pass).
Requests wait in a bounded queue; text deltas come back through ``loop.call_soon_threadsafe``; the worker sleeps on
a condition variable when there is nothing to do, and enforces each request's deadline between steps. A reload
loads and checks the new checkpoint on another thread, then the worker swaps it in between two steps: requests
already running finish on the old model (its engine keeps stepping until it drains), new ones start on the new one.

The protocol, handle, results and errors live in `bot.generation` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from bot.generation import (
    Completion,
    GenerationFailed,
    GenerationHandle,
    GenerationTimeout,
    Generator,
    GeneratorBusy,
    GeneratorClosed,
    GeneratorStats,
    ModelInfo,
    ReloadFailed,
)
from llm.checkpoints import CheckpointError, LoadedCheckpoint, load_checkpoint
from llm.engine import Engine, Event
from llm.generate import SamplingParams, fit_prompt, generate_tokens
from llm.model import GPTModel
from llm.quantize import MODES, Mode, quantize_model
from llm.tokenizer import Tokenizer

__all__ = [
    "Completion",
    "GenerationFailed",
    "GenerationHandle",
    "GenerationTimeout",
    "Generator",
    "GeneratorBusy",
    "GeneratorClosed",
    "GeneratorStats",
    "LocalGenerator",
    "ModelInfo",
    "ReloadFailed",
]

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # `recent_tokens_per_second` counts the tokens of this many past seconds
SMOKE_PROMPT = "Below is an instruction that describes a task."  # a reload must generate from this
SMOKE_TOKENS = 4


# ---------------------------------------------------------------------------------------------------------------
# LocalGenerator


@dataclass(eq=False)
class _Request:
    handle: GenerationHandle
    prompt_ids: list[int]
    params: SamplingParams
    timeout_s: float | None
    accepted_at: float = 0.0  # time.monotonic()
    served: _Served | None = None  # the engine it runs on, once admitted
    seq_id: int = 0
    token_ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    finished: bool = False  # its outcome is on the way to the handle

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.accepted_at > self.timeout_s


@dataclass(eq=False)
class _Served:
    """One model's engine and the requests running on it; an old one drains after a reload."""

    engine: Engine
    info: ModelInfo
    requests: dict[int, _Request] = field(default_factory=dict)  # by engine sequence id


@dataclass(eq=False)
class _Swap:
    served: _Served
    done: asyncio.Future[ModelInfo]


Delivery = tuple[GenerationHandle, str | Completion | BaseException]


class LocalGenerator:
    """In-process generation: one worker thread, one `Engine` per loaded model, a bounded queue in front."""

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        tokenizer: Tokenizer,
        *,
        name: str,
        precision: Mode = "fp32",
        max_batch: int = 8,
        queue_size: int = 64,
    ) -> None:
        if precision not in MODES:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(MODES)}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self._checkpoint: LoadedCheckpoint | None = checkpoint  # until start() hands its model to the worker
        self._tokenizer = tokenizer
        self._precision: Mode = precision
        self._max_batch = max_batch
        self._queue_size = queue_size
        self._device = checkpoint.model.tok_emb.weight.device
        self._info = self._describe(checkpoint, name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._reload_lock = asyncio.Lock()
        # Shared with the worker thread, under `_lock`.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._intake: deque[_Request] = deque()
        self._cancels: list[_Request] = []
        self._swap: _Swap | None = None
        self._stopping = False  # finish what was accepted, then exit
        self._abort = False  # fail whatever is still running, then exit
        self._outstanding = 0  # accepted and not yet finished
        self._active = 0
        self._rates: deque[tuple[float, float, int]] = deque()  # (start, end, tokens) of recent steps
        # Worker thread only.
        self._served: list[_Served] = []  # the last one is current; earlier ones drain

    # -------------------------------------------------------------------------------------------- public API

    @property
    def context_length(self) -> int:
        return self._info.context_length

    @property
    def info(self) -> ModelInfo:
        return self._info

    def stats(self) -> GeneratorStats:
        now = time.monotonic()
        with self._lock:
            while self._rates and self._rates[0][1] < now - RATE_WINDOW_S:
                self._rates.popleft()
            tokens = sum(n for _, _, n in self._rates)
            # Over the time since the window's first step began: a burst that started 2 s ago is not spread over 10.
            span = now - self._rates[0][0] if self._rates else 0.0
            waiting, active = self._outstanding - self._active, self._active
        rate = tokens / span if span > 0 else 0.0
        return GeneratorStats(queue_depth=waiting, active=active, recent_tokens_per_second=rate)

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, *, timeout_s: float | None = None
    ) -> GenerationHandle:
        """A handle for one request; enter it to submit. Raises `PromptTooLongError` for a refused prompt."""
        if self._closing:
            raise GeneratorClosed("the bot is shutting down and takes no new requests; try again in a minute")
        fit_prompt(prompt_ids, self.context_length, params)  # refuse a bad prompt now, not from the worker
        request: _Request | None = None

        def submit(handle: GenerationHandle) -> None:
            nonlocal request
            request = _Request(handle, list(prompt_ids), params, timeout_s)
            self._enqueue(request)

        return GenerationHandle(submit, lambda _: self._cancel(request) if request is not None else None)

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the generator is already started")
        checkpoint, self._checkpoint = self._checkpoint, None
        assert checkpoint is not None
        self._loop = asyncio.get_running_loop()
        served = await asyncio.to_thread(self._prepare, checkpoint.model, self._info)
        self._served.append(served)
        self._thread = threading.Thread(target=self._run, name="scratchbot-inference", daemon=True)
        self._thread.start()
        log.info("serving %s (%s, %s, batch of %d)", self._info.name, self._precision, self._device, self._max_batch)

    async def close(self, grace_s: float) -> None:
        """Take no new requests; let accepted ones finish within ``grace_s`` seconds, then cut the rest short."""
        self._closing = True
        if self._thread is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join, max(grace_s, 0.0))
        if self._thread.is_alive():
            with self._wake:
                log.warning("%d generations still running after %.1fs; cutting them short", self._outstanding, grace_s)
                self._abort = True
                self._wake.notify()
            await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def reload(self, path: Path, name: str) -> ModelInfo:
        """Load, check and swap in the checkpoint at ``path``; on any failure raise `ReloadFailed`, keep serving."""
        if self._closing or self._thread is None:
            raise ReloadFailed("the generator is not running (shutting down or not started); nothing was changed")
        if self._reload_lock.locked():
            raise ReloadFailed("another reload is in progress; try again when it has finished")
        async with self._reload_lock:
            try:
                served = await asyncio.to_thread(self._load_and_check, Path(path), name)
            except ReloadFailed:
                raise
            except CheckpointError as e:
                raise ReloadFailed(f"cannot load {name}: {e}") from e
            except Exception as e:
                log.exception("checkpoint %s failed its checks", path)
                raise ReloadFailed(f"checkpoint {name} failed its checks ({type(e).__name__}: {e})") from e
            assert self._loop is not None
            done: asyncio.Future[ModelInfo] = self._loop.create_future()
            with self._wake:
                if self._stopping:  # the worker may be gone and would never take the new model
                    raise ReloadFailed("the generator is shutting down; nothing was changed")
                self._swap = _Swap(served, done)
                self._wake.notify()
            return await done

    # ------------------------------------------------------------------------------------- model preparation

    def _describe(self, checkpoint: LoadedCheckpoint, name: str) -> ModelInfo:
        return ModelInfo(
            name=name,
            sha256=checkpoint.sha256,
            parameters=checkpoint.model.num_parameters,
            device=str(self._device),
            precision=self._precision,
            context_length=checkpoint.config.context_length,
            loaded_at=datetime.now(UTC),
        )

    def _prepare(self, model: GPTModel, info: ModelInfo) -> _Served:
        model = quantize_model(model, self._precision)
        return _Served(Engine(model, self._tokenizer, self._max_batch), info)

    def _load_and_check(self, path: Path, name: str) -> _Served:
        """Runs on a side thread: the worker keeps serving the old model meanwhile."""
        checkpoint = load_checkpoint(path, device=self._device)
        vocab = checkpoint.config.vocab_size
        if vocab != self._tokenizer.vocab_size:
            raise ReloadFailed(
                f"{name} has a vocabulary of {vocab} tokens but the GPT-2 tokenizer has "
                f"{self._tokenizer.vocab_size}; it was not trained for this tokenizer"
            )
        info = self._describe(checkpoint, name)
        served = self._prepare(checkpoint.model, info)
        ids = self._tokenizer.encode(SMOKE_PROMPT)
        with torch.inference_mode():
            logits = served.engine.model(torch.tensor([ids], device=self._device))  # (1, T, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise ReloadFailed(f"{name} produces NaN or infinite outputs; its weights are damaged")
        list(generate_tokens(served.engine.model, ids, SamplingParams(max_new_tokens=SMOKE_TOKENS)))
        return served

    # ----------------------------------------------------------------------------------- event-loop side

    def _enqueue(self, request: _Request) -> None:
        if self._closing:
            raise GeneratorClosed("the bot is shutting down and takes no new requests; try again in a minute")
        if self._thread is None:
            raise RuntimeError("the generator is not started; call `await generator.start()` first")
        with self._wake:
            if self._outstanding >= self._max_batch + self._queue_size:
                raise GeneratorBusy(f"the bot is busy ({self._outstanding} requests ahead); try again in a moment")
            request.accepted_at = time.monotonic()
            self._outstanding += 1
            self._intake.append(request)
            self._wake.notify()

    def _cancel(self, request: _Request) -> None:
        with self._wake:
            if request in self._intake:
                self._intake.remove(request)
                self._outstanding -= 1
            else:
                self._cancels.append(request)
                self._wake.notify()

    @staticmethod
    def _deliver(deliveries: list[Delivery]) -> None:
        for handle, item in deliveries:
            if isinstance(item, str):
                handle.feed(item)
            elif isinstance(item, Completion):
                handle.finish(item)
            else:
                handle.fail(item)

    @staticmethod
    def _resolve(future: asyncio.Future[ModelInfo], outcome: ModelInfo | BaseException) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    # ------------------------------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._intake or self._cancels or self._swap or self._stopping or self._has_work()):
                    self._wake.wait()  # idle: sleep until the loop hands over something
                intake, self._intake = self._intake, deque()
                cancels, self._cancels = self._cancels, []
                swap, self._swap = self._swap, None
                stopping, abort = self._stopping, self._abort
            deliveries: list[Delivery] = []
            try:
                if swap is not None:
                    self._served.append(swap.served)
                    self._info = swap.served.info  # new streams see the new context length from now on
                    self._call_soon(self._resolve, swap.done, swap.served.info)
                    log.info("swapped in %s (%s)", swap.served.info.name, swap.served.info.sha256[:12])
                for request in cancels:
                    self._drop(request)
                if abort:
                    self._fail_all(list(intake), GenerationFailed("the bot shut down before this answer finished"))
                    break
                for request in intake:
                    self._admit(request, deliveries)
                self._expire(deliveries)
                self._step(deliveries)
            except Exception as e:
                # A defect of ours, not of one request: fail what is running rather than let the thread die.
                log.exception("the inference worker failed; failing the requests in flight")
                unadmitted = [r for r in intake if r.served is None and not r.finished]
                self._fail_all(unadmitted, GenerationFailed(f"the bot's inference worker failed ({type(e).__name__})"))
            self._flush(deliveries)
            if stopping and not self._has_work() and not self._intake:
                break
        with self._wake:
            swap, self._swap = self._swap, None
        if swap is not None:
            self._call_soon(self._resolve, swap.done, ReloadFailed("the generator shut down during the reload"))
        log.info("inference worker stopped")

    def _has_work(self) -> bool:
        return any(s.engine.has_work for s in self._served)

    def _admit(self, request: _Request, deliveries: list[Delivery]) -> None:
        served = self._served[-1]
        try:
            request.seq_id = served.engine.submit(request.prompt_ids, request.params)
        except Exception as e:  # the prompt no longer fits after a reload to a shorter context, ...
            self._finish(request, deliveries, e)
            return
        request.served = served
        served.requests[request.seq_id] = request

    def _drop(self, request: _Request) -> None:
        served = request.served
        if served is not None and served.requests.pop(request.seq_id, None) is not None:
            served.engine.cancel(request.seq_id)
            with self._lock:
                self._outstanding -= 1

    def _expire(self, deliveries: list[Delivery]) -> None:
        now = time.monotonic()
        for served in self._served:
            for request in [r for r in served.requests.values() if r.expired(now)]:
                del served.requests[request.seq_id]
                served.engine.cancel(request.seq_id)
                error = GenerationTimeout(f"no complete answer within {request.timeout_s:g} seconds")
                self._finish(request, deliveries, error)

    def _step(self, deliveries: list[Delivery]) -> None:
        tokens, start = 0, time.monotonic()
        for served in list(self._served):
            while served.engine.can_admit:
                # One prefill at a time, each first token sent at once: with many arrivals the first answer does
                # not wait for every other prompt's prefill and the batch's decode step.
                tokens += self._handle(served, served.engine.admit(limit=1), deliveries)
                self._flush(deliveries)
            tokens += self._handle(served, served.engine.decode(), deliveries)
            if served is not self._served[-1] and not served.engine.has_work:
                self._served.remove(served)  # drained: the old model and its cache can go
                log.info("old model %s drained", served.info.name)
        with self._lock:
            self._active = sum(s.engine.active for s in self._served)
            if tokens:
                self._rates.append((start, time.monotonic(), tokens))

    def _handle(self, served: _Served, events: list[Event], deliveries: list[Delivery]) -> int:
        """Route events to their requests; return how many tokens they carry."""
        for event in events:
            self._on_event(served, event, deliveries)
        return sum(event.token_id is not None for event in events)

    def _flush(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._call_soon(self._deliver, deliveries.copy())
            deliveries.clear()

    def _on_event(self, served: _Served, event: Event, deliveries: list[Delivery]) -> None:
        request = served.requests.get(event.seq_id)
        if request is None:
            return
        if event.token_id is not None:
            request.token_ids.append(event.token_id)
            if request.first_token_at is None:
                request.first_token_at = time.monotonic()
        if event.text:
            request.parts.append(event.text)
            deliveries.append((request.handle, event.text))
        if not event.finished:
            return
        del served.requests[event.seq_id]
        if event.error is not None:
            log.error("generation on %s failed", served.info.name, exc_info=event.error)
            failure = GenerationFailed("the model failed while writing this answer; the error was logged")
            self._finish(request, deliveries, failure)
        else:
            self._finish(request, deliveries, self._completion(request, served.info, str(event.finish_reason)))

    def _completion(self, request: _Request, info: ModelInfo, reason: str) -> Completion:
        now = time.monotonic()
        first = None if request.first_token_at is None else request.first_token_at - request.accepted_at
        return Completion(
            text="".join(request.parts),
            token_ids=tuple(request.token_ids),
            finish_reason=reason,
            model_name=info.name,
            model_sha256=info.sha256,
            seconds=now - request.accepted_at,
            first_token_seconds=first,
        )

    def _finish(self, request: _Request, deliveries: list[Delivery], outcome: Completion | BaseException) -> None:
        request.finished = True
        deliveries.append((request.handle, outcome))
        with self._lock:
            self._outstanding -= 1

    def _fail_all(self, pending: list[_Request], error: BaseException) -> None:
        deliveries: list[Delivery] = [(r.handle, error) for r in pending]
        for served in self._served:
            for request in served.requests.values():
                served.engine.cancel(request.seq_id)
                deliveries.append((request.handle, error))
            served.requests.clear()
        with self._lock:
            self._outstanding -= len(deliveries)
            self._active = 0
        self._call_soon(self._deliver, deliveries)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting for this any more
            log.debug("event loop closed; dropped a delivery from the inference worker")
