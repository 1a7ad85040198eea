"""In-process generation: `LocalGenerator` runs the model on ONE worker thread, never on the event loop.

The worker (`bot.inference.worker`) runs `llm.decoding.engine.Engine` (continuous batching: every active request
advances in the same forward pass). Requests wait in a bounded queue; text deltas come back through
``loop.call_soon_threadsafe``; the worker sleeps on a condition variable when there is nothing to do, and enforces
each request's deadline between steps. A reload loads and checks the new checkpoint on another thread (never the
worker, never the loop), then the worker swaps it in between two steps: requests already running finish on the old
model (its engine keeps stepping until it drains), new ones start on the new one.

The protocol, handle, results and errors live in `bot.inference.generator`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import torch

from bot.inference.generator import (
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
    TenantBusy,
)
from bot.inference.requests import Request, Served
from bot.inference.worker import InferenceWorker
from llm.checkpoints.common import CheckpointError, LoadedCheckpoint
from llm.checkpoints.load import load_checkpoint
from llm.decoding.cpu_layout import prepare_for_batches
from llm.decoding.engine import Engine
from llm.decoding.quantize import MODES, Mode, quantize_model
from llm.decoding.runs import generate_all
from llm.decoding.sampling import SamplingParams, fit_prompt
from llm.model import GPTModel
from llm.prompts import answer_length_problem
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
    "TenantBusy",
]

log = logging.getLogger(__name__)

SMOKE_PROMPT = "Below is an instruction that describes a task."  # a reload must generate from this
SMOKE_TOKENS = 4


class LocalGenerator:
    """In-process generation: one worker thread, one `Engine` per loaded model, a bounded queue in front.

    The generator takes over ``checkpoint.model``: `start` converts it to ``precision`` in place.
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        tokenizer: Tokenizer,
        *,
        name: str,
        precision: Mode = "fp32",
        max_batch: int = 8,
        queue_size: int = 64,
        tenant_max_active: int | None = None,
    ) -> None:
        """``tenant_max_active``: requests one tenant may have accepted at once, running or waiting (None: no cap)."""
        if precision not in MODES:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(MODES)}")
        if max_batch < 1 or queue_size < 0:
            raise ValueError(f"max_batch must be >= 1 and queue_size >= 0, got {max_batch} and {queue_size}")
        self._checkpoint: LoadedCheckpoint | None = checkpoint  # until start() hands its model to the worker
        self._tokenizer = tokenizer
        self._precision: Mode = precision
        self._max_batch = max_batch
        self._queue_size = queue_size
        self._tenant_max_active = tenant_max_active
        self._device = checkpoint.model.tok_emb.weight.device
        self._first_info = self._describe(checkpoint, name)
        self._worker: InferenceWorker | None = None
        self._closing = False

    # -------------------------------------------------------------------------------------------- Generator

    @property
    def context_length(self) -> int:
        return self.info.context_length

    @property
    def info(self) -> ModelInfo:
        return self._worker.info if self._worker is not None else self._first_info

    def stats(self) -> GeneratorStats:
        if self._worker is None:
            return GeneratorStats(queue_depth=0, active=0, recent_tokens_per_second=0.0)
        return self._worker.stats()

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, *, timeout_s: float | None = None, tenant: str = ""
    ) -> GenerationHandle:
        """A handle for one request; enter it to submit. Raises `PromptTooLongError` for a refused prompt."""
        self._check_open()
        fit_prompt(prompt_ids, self.context_length, params)  # refuse a bad prompt now, not from the worker
        request: Request | None = None

        def submit(handle: GenerationHandle) -> None:
            nonlocal request
            worker = self._check_open()
            request = Request(handle, list(prompt_ids), params, timeout_s, tenant)
            worker.submit(request)

        def cancel(handle: GenerationHandle) -> None:
            if request is not None and self._worker is not None:
                self._worker.cancel(request)

        return GenerationHandle(submit, cancel)

    async def start(self) -> None:
        if self._checkpoint is None:
            raise RuntimeError("the generator was already started; create a new one to serve again")
        checkpoint, self._checkpoint = self._checkpoint, None
        served = await asyncio.to_thread(self._prepare, checkpoint.model, self._first_info)
        self._worker = InferenceWorker(
            asyncio.get_running_loop(),
            served,
            capacity=self._max_batch + self._queue_size,
            tenant_cap=self._tenant_max_active,
        )
        self._worker.start()
        log.info("serving %s (%s, %s, batch of %d)", self.info.name, self._precision, self._device, self._max_batch)

    async def close(self, grace_s: float) -> None:
        """Take no new requests; let accepted ones finish within ``grace_s`` seconds, then cut the rest short."""
        self._closing = True
        worker = self._worker
        if worker is None or not worker.is_alive():
            return
        worker.stop()
        await asyncio.to_thread(worker.join, max(grace_s, 0.0))
        if worker.is_alive():
            worker.abort()
            await asyncio.to_thread(worker.join)

    async def reload(self, path: Path, name: str) -> ModelInfo:
        """Load, check and swap in the checkpoint at ``path``; on any failure raise `ReloadFailed`, keep serving."""
        if self._closing or self._worker is None:
            raise ReloadFailed("the generator is not running (shutting down or not started); nothing was changed")
        # One reload at a time is the caller's rule (bot.core.admin queues them); this loads and swaps.
        try:
            served = await asyncio.to_thread(self._load_and_check, Path(path), name)
        except ReloadFailed:
            raise
        except CheckpointError as e:
            raise ReloadFailed(f"cannot load {name}: {e}") from e
        except Exception as e:
            log.exception("checkpoint %s failed its checks", path)
            raise ReloadFailed(f"checkpoint {name} failed its checks ({type(e).__name__}: {e})") from e
        return await self._worker.swap(served)

    def _check_open(self) -> InferenceWorker:
        if self._closing:
            raise GeneratorClosed("the bot is shutting down and takes no new requests; try again in a minute")
        if self._worker is None:
            raise RuntimeError("the generator is not started; call `await generator.start()` first")
        return self._worker

    # ------------------------------------------------------------------------------------- model preparation

    def _describe(self, checkpoint: LoadedCheckpoint, name: str) -> ModelInfo:
        return ModelInfo(
            name=name,
            sha256=checkpoint.sha256,
            parameters=checkpoint.model.num_parameters,  # before quantization, which turns weights into buffers
            device=str(self._device),
            precision=self._precision,
            context_length=checkpoint.config.context_length,
            loaded_at=datetime.now(UTC),
        )

    def _prepare(self, model: GPTModel, info: ModelInfo) -> Served:
        model = quantize_model(model, self._precision)
        # Weight layouts for a batched decode step on a CPU (same values): an fp32 model is ours from here on.
        prepare_for_batches(model, self._max_batch)
        return Served(Engine(model, self._tokenizer, self._max_batch), info)

    def _load_and_check(self, path: Path, name: str) -> Served:
        """Runs on a side thread: the worker keeps serving the old model meanwhile."""
        checkpoint = load_checkpoint(path, device=self._device)
        if problem := answer_length_problem(1, checkpoint.config.context_length, self._tokenizer):
            raise ReloadFailed(f"{name} cannot serve chat: {problem}")
        vocab = checkpoint.config.vocab_size
        if vocab != self._tokenizer.vocab_size:
            raise ReloadFailed(
                f"{name} has a vocabulary of {vocab} tokens but the GPT-2 tokenizer has "
                f"{self._tokenizer.vocab_size}; it was not trained for this tokenizer"
            )
        served = self._prepare(checkpoint.model, self._describe(checkpoint, name))
        ids = self._tokenizer.encode(SMOKE_PROMPT)
        with torch.inference_mode():
            logits = served.engine.model(torch.tensor([ids], device=self._device))  # (1, T, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise ReloadFailed(f"{name} produces NaN or infinite outputs; its weights are damaged")
        generate_all(served.engine, [ids], SamplingParams(max_new_tokens=SMOKE_TOKENS))  # the worker has not got it
        return served
