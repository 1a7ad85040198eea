"""The thread that owns the models: it runs their `Engine`s and hands results back to the event loop.

`bot.inference.local.LocalGenerator` is the asyncio face; this is the other side of its queue. The loop thread calls
`submit`, `cancel`, `swap`, `stop` and `abort`, which only touch the few fields guarded by one lock and wake the
thread; everything else (engines, requests in flight) belongs to the thread alone. Results travel back in batches
through ``loop.call_soon_threadsafe``: one call per admission or decode step, not one per token per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from bot.inference.fairness import FairQueue
from bot.inference.generator import (
    Completion,
    GenerationFailed,
    GenerationHandle,
    GenerationTimeout,
    GeneratorBusy,
    GeneratorStats,
    ModelInfo,
    ReloadFailed,
    TenantBusy,
)
from bot.inference.memory import release_freed_memory
from bot.inference.requests import Request, Served
from llm.decoding.engine import Event

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # `recent_tokens_per_second` counts the tokens of this many past seconds


@dataclass(eq=False)
class _Swap:
    served: Served
    done: asyncio.Future[ModelInfo]


Delivery = tuple[GenerationHandle, str | Completion | BaseException]


class InferenceWorker:
    """One thread, the current model's engine plus any old ones still draining after a reload.

    Accepted requests wait in a `FairQueue` and enter the engine only when it has a free row, so the order in which
    tenants get rows is decided here, fairly, not by arrival."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, served: Served, *, capacity: int, tenant_cap: int | None = None
    ) -> None:
        self._loop = loop
        self._capacity = capacity  # requests accepted at once, generating or waiting
        self._tenant_cap = tenant_cap  # of those, at most this many from one tenant (None: no cap)
        self._info = served.info
        self._thread = threading.Thread(target=self._run, name="scratchbot-inference", daemon=True)
        # Shared with the loop thread, under `_lock`.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._intake: deque[Request] = deque()
        self._cancels: list[Request] = []
        self._swap: _Swap | None = None
        self._stopping = False  # finish what was accepted, then exit
        self._abort = False  # fail whatever is still running, then exit
        self._outstanding = 0  # accepted and not yet finished
        self._per_tenant: Counter[str] = Counter()  # the same, by tenant
        self._active = 0
        self._rates: deque[tuple[float, float, int]] = deque()  # (start, end, tokens) of recent steps
        # The worker thread's alone.
        self._served: list[Served] = [served]  # the last one is current; earlier ones drain
        self._waiting: FairQueue[Request] = FairQueue(lambda r: r.tenant)  # accepted, no engine row yet

    # ------------------------------------------------------------------------------------- event-loop side

    @property
    def info(self) -> ModelInfo:
        """The model new requests run on."""
        return self._info

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def submit(self, request: Request) -> None:
        """Accept a request, or raise `GeneratorBusy` at once when `capacity` requests are already accepted."""
        with self._wake:
            if self._outstanding >= self._capacity:
                raise GeneratorBusy(f"the bot is busy ({self._outstanding} requests ahead); try again in a moment")
            if self._tenant_cap is not None and self._per_tenant[request.tenant] >= self._tenant_cap:
                raise TenantBusy(f"{request.tenant} has {self._tenant_cap} requests in progress, its share")
            request.accepted_at = time.monotonic()
            self._outstanding += 1
            self._per_tenant[request.tenant] += 1
            self._intake.append(request)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        with self._wake:
            if request in self._intake:
                self._intake.remove(request)
                self._settle_locked([request])
            else:
                self._cancels.append(request)
                self._wake.notify()

    def swap(self, served: Served) -> asyncio.Future[ModelInfo]:
        """Hand over a checked model; the future resolves once new requests go to it."""
        done: asyncio.Future[ModelInfo] = self._loop.create_future()
        with self._wake:
            if self._stopping:  # the thread may be gone and would never take the new model
                raise ReloadFailed("the generator is shutting down; nothing was changed")
            self._swap = _Swap(served, done)
            self._wake.notify()
        return done

    def stop(self) -> None:
        """Take nothing new; exit once every accepted request has finished."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def abort(self) -> None:
        """Fail whatever is still running, then exit."""
        with self._wake:
            if self._outstanding:
                log.warning("cutting %d unfinished generations short", self._outstanding)
            self._stopping = self._abort = True
            self._wake.notify()

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
                    self._waiting.push(request)
                self._expire(deliveries)
                self._admit_fairly(deliveries)
                self._step(deliveries)
            except Exception as e:
                # A defect of ours, not of one request: fail what is running rather than let the thread die.
                log.exception("the inference worker failed; failing the requests in flight")
                waiting = dict.fromkeys([*intake, *self._waiting.take_all()])  # once each, in order
                unadmitted = [r for r in waiting if r.served is None and not r.finished]
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
        return bool(self._waiting) or any(s.engine.has_work for s in self._served)

    def _admit_fairly(self, deliveries: list[Delivery]) -> None:
        """Fill the current engine's free rows from the fair queue; the rest keep waiting here."""
        engine = self._served[-1].engine
        if not self._waiting or engine.active + engine.waiting >= engine.max_batch:
            return  # the usual decode step: nothing to choose
        running = Counter(r.tenant for s in self._served for r in s.requests.values())
        while engine.active + engine.waiting < engine.max_batch:
            request = self._waiting.pop(running)
            if request is None:
                return
            self._admit(request, deliveries)
            running[request.tenant] += 1

    def _admit(self, request: Request, deliveries: list[Delivery]) -> None:
        served = self._served[-1]
        try:
            request.seq_id = served.engine.submit(request.prompt_ids, request.params)
        except Exception as e:  # the prompt no longer fits after a reload to a shorter context, ...
            self._finish(request, deliveries, e)
            return
        request.served = served
        served.requests[request.seq_id] = request

    def _drop(self, request: Request) -> None:
        served = request.served
        if served is None:
            if self._waiting.remove(request):
                self._settle([request])
        elif served.requests.pop(request.seq_id, None) is not None:
            served.engine.cancel(request.seq_id)
            self._settle([request])

    def _expire(self, deliveries: list[Delivery]) -> None:
        now = time.monotonic()
        for request in [r for r in self._waiting if r.expired(now)]:
            self._waiting.remove(request)
            self._finish(
                request, deliveries, GenerationTimeout(f"no complete answer within {request.timeout_s:g} seconds")
            )
        for served in self._served:
            for request in [r for r in served.requests.values() if r.expired(now)]:
                del served.requests[request.seq_id]
                served.engine.cancel(request.seq_id)
                error = GenerationTimeout(f"no complete answer within {request.timeout_s:g} seconds")
                self._finish(request, deliveries, error)

    def _step(self, deliveries: list[Delivery]) -> None:
        tokens, start = 0, time.monotonic()
        for served in self._served:
            while served.engine.can_admit:
                # One prefill at a time, each first token sent at once: with many arrivals the first answer does
                # not wait for every other prompt's prefill and the batch's decode step.
                tokens += self._handle(served, served.engine.admit(limit=1), deliveries)
                self._flush(deliveries)
            tokens += self._handle(served, served.engine.decode(), deliveries)
        if any(not s.engine.has_work for s in self._served[:-1]):
            # Drained: the old model and its cache can go, and their memory back to the system (not kept by the
            # allocator), once nothing here refers to them any more.
            self._served = [s for s in self._served[:-1] if s.engine.has_work] + self._served[-1:]
            del served
            release_freed_memory()
            log.info("old model drained; %d model(s) serving", len(self._served))
        with self._lock:
            self._active = sum(s.engine.active for s in self._served)
            if tokens:
                self._rates.append((start, time.monotonic(), tokens))

    def _handle(self, served: Served, events: list[Event], deliveries: list[Delivery]) -> int:
        """Route events to their requests; return how many tokens they carry."""
        for event in events:
            self._on_event(served, event, deliveries)
        return sum(event.token_id is not None for event in events)

    def _flush(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._call_soon(self._deliver, deliveries.copy())
            deliveries.clear()

    def _on_event(self, served: Served, event: Event, deliveries: list[Delivery]) -> None:
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

    def _completion(self, request: Request, info: ModelInfo, reason: str) -> Completion:
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

    def _finish(self, request: Request, deliveries: list[Delivery], outcome: Completion | BaseException) -> None:
        request.finished = True
        request.served = None  # a handle kept after its answer must not keep a reloaded-away model alive
        deliveries.append((request.handle, outcome))
        self._settle([request])

    def _fail_all(self, pending: list[Request], error: BaseException) -> None:
        failed = [*pending, *self._waiting.take_all()]
        for served in self._served:
            for request in served.requests.values():
                served.engine.cancel(request.seq_id)
                failed.append(request)
            served.requests.clear()
        with self._lock:
            self._settle_locked(failed)
            self._active = 0
        self._call_soon(self._deliver, [(r.handle, error) for r in failed])

    def _settle(self, requests: list[Request]) -> None:
        with self._lock:
            self._settle_locked(requests)

    def _settle_locked(self, requests: list[Request]) -> None:
        """Requests that will take no more of the model: their places, overall and in their tenant's share, free."""
        self._outstanding -= len(requests)
        for request in requests:
            self._per_tenant[request.tenant] -= 1
            if not self._per_tenant[request.tenant]:
                del self._per_tenant[request.tenant]  # tenants come and go; the counter must not grow forever

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting for this any more
            log.debug("event loop closed; dropped a delivery from the inference worker")
