"""Continuous batching: many sequences share one model and advance together, one token each per decode step.

An `Engine` owns one preallocated `KVCache` of ``max_batch`` rows. `submit` queues a prompt; every `step` first
admits waiting sequences into free rows (prefill, first token), then runs ONE decode forward pass for all active
rows, each at its own position, and samples each row with its own `SamplingParams`. A sequence joins or leaves the
batch between steps; nothing else waits for it.

Active sequences always occupy the cache rows 0..B-1. When one leaves, the last row's keys and values move into the
hole (only the positions it has written). That costs one copy per finished sequence, but lets every decode step read
the cache through plain slices instead of gathering the rows of every layer again at every step.

The engine is synchronous and single-threaded: the caller (``bot.inference.worker``'s thread) owns it, and the
model with it. It is the one decode loop: the service, `scratchbot generate` and `evaluate` (through
`llm.decoding.runs`) all generate here, under one rule for when a sequence ends.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from llm.decoding.sampling import EOT_ID, FinishReason, SamplingParams, fit_prompt, sample
from llm.decoding.steps import decode_step, make_cache, prefill
from llm.decoding.stops import StopTextDecoder
from llm.model import GPTModel
from llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EngineFinishReason = FinishReason | Literal["error"]


@dataclass(frozen=True)
class Event:
    """Something that happened to one sequence during a `Engine.step`."""

    seq_id: int
    token_id: int | None  # the token sampled; None for end-of-text (never part of the output) and errors
    text: str  # text this event releases (may be "" while a character or a possible stop string is held back)
    finished: bool = False  # the sequence is done and its cache row is free
    finish_reason: EngineFinishReason | None = None  # set when finished
    error: Exception | None = None  # what the model raised, with finish_reason "error"


class _Sequence:
    """One request's state in the engine."""

    __slots__ = ("budget", "decoder", "generated", "generator", "params", "pending", "position", "prompt", "seq_id")

    def __init__(self, seq_id: int, prompt: list[int], params: SamplingParams, decoder: StopTextDecoder) -> None:
        self.seq_id = seq_id
        self.prompt = prompt  # after the overflow policy
        self.params = params
        self.decoder = decoder
        self.budget = 0  # tokens it may produce in all (max_new_tokens, or less at the context end); set on admission
        self.generator: torch.Generator | None = None  # its own, so sampling does not depend on batch neighbours
        self.generated = 0
        self.pending = 0  # the sampled token not yet run through the model
        self.position = 0  # where `pending` goes in the cache


class Engine:
    """Continuous batching over one model. Not thread-safe: one thread calls every method."""

    def __init__(self, model: GPTModel, tokenizer: Tokenizer, max_batch: int = 8, max_len: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"the model's vocabulary has {model.config.vocab_size} tokens but the tokenizer's has "
                f"{tokenizer.vocab_size}; use a checkpoint trained with the GPT-2 tokenizer"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        # Shorter than the context only to save memory (a long-context model in a small machine); prompts are then
        # fitted to this length instead.
        self.context_length = min(max_len or model.config.context_length, model.config.context_length)
        self._device = model.tok_emb.weight.device
        # Zeroed once: stale keys/values of earlier sequences are masked out, never re-zeroed per request.
        with torch.inference_mode():
            self._cache = make_cache(model, max_batch, self.context_length)
        self._ids = itertools.count(1)
        self._waiting: deque[_Sequence] = deque()
        self._rows: list[_Sequence] = []  # index == cache row

    # ------------------------------------------------------------------------------------------------- intake

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        """Queue a prompt; return its sequence id. Raises `PromptTooLongError` under ``overflow="error"``."""
        ids, _ = fit_prompt(prompt_ids, self.context_length, params)
        seq = _Sequence(next(self._ids), ids, params, StopTextDecoder(self.tokenizer, params.stop))
        self._waiting.append(seq)
        return seq.seq_id

    def cancel(self, seq_id: int) -> bool:
        """Drop a sequence, waiting or active, and free its row; False if it is unknown or already finished.

        No event is emitted for it: whoever cancels already knows.
        """
        for seq in self._waiting:
            if seq.seq_id == seq_id:
                self._waiting.remove(seq)
                return True
        for row, seq in enumerate(self._rows):
            if seq.seq_id == seq_id:
                self._release([row])
                return True
        return False

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting)

    # --------------------------------------------------------------------------------------------------- step

    def step(self) -> list[Event]:
        """Admit waiting sequences into free rows, then advance every active row by one token."""
        return self.admit() + self.decode()

    @property
    def can_admit(self) -> bool:
        return bool(self._waiting) and len(self._rows) < self.max_batch

    @torch.inference_mode()
    def admit(self, limit: int | None = None) -> list[Event]:
        """The first half of `step`: prefill up to ``limit`` waiting sequences (all that fit by default).

        A caller that streams can deliver each new sequence's first token before the batch's decode step.
        """
        events: list[Event] = []
        while self.can_admit and (limit is None or limit > 0):
            self._admit(self._waiting.popleft(), events)
            limit = None if limit is None else limit - 1
        return events

    @torch.inference_mode()
    def decode(self) -> list[Event]:
        """The second half of `step`: one batched forward pass, one new token for every active row."""
        events: list[Event] = []
        if self._rows:
            self._decode(events)
        return events

    def _admit(self, seq: _Sequence, events: list[Event]) -> None:
        row = len(self._rows)
        try:
            prompt = torch.tensor(seq.prompt, dtype=torch.long, device=self._device)
            logits = prefill(self.model, prompt, self._cache, row)  # (vocab,)
            seq.budget = min(seq.params.max_new_tokens, self.context_length - len(seq.prompt))
            seq.position = len(seq.prompt)
            seq.generator = seq.params.make_generator(self._device)
            token_id = int(sample(logits[None, :], seq.params, seq.generator))
            event = self._accept(seq, token_id)
        except Exception as e:
            # Only this request is at fault (bad token ids, ...); its row was never counted as taken.
            log.warning("prefill of sequence %d failed: %r", seq.seq_id, e)
            events.append(Event(seq.seq_id, None, "", finished=True, finish_reason="error", error=e))
            return
        events.append(event)
        if not event.finished:
            self._rows.append(seq)

    def _decode(self, events: list[Event]) -> None:
        rows = self._rows
        try:
            tokens = torch.tensor([s.pending for s in rows], dtype=torch.long, device=self._device)  # (B,)
            positions = torch.tensor([s.position for s in rows], dtype=torch.long, device=self._device)  # (B,)
            # Rows are 0..B-1, so the model reads the cache by slicing (slots=None), no per-layer gather.
            logits = decode_step(self.model, tokens, positions, self._cache)  # (B, vocab)
            chosen = logits.argmax(dim=-1).tolist()  # greedy rows, all in one call
            for i, seq in enumerate(rows):
                if not seq.params.greedy:
                    chosen[i] = int(sample(logits[i : i + 1], seq.params, seq.generator))
        except Exception as e:
            # The batch shares the failure; report it to every row and start again from an empty batch.
            log.warning("decode step of %d sequences failed: %r", len(rows), e)
            events.extend(Event(s.seq_id, None, "", finished=True, finish_reason="error", error=e) for s in rows)
            self._rows = []
            return
        done: list[int] = []
        for i, (seq, token_id) in enumerate(zip(rows, chosen, strict=True)):
            seq.position += 1
            event = self._accept(seq, token_id)
            events.append(event)
            if event.finished:
                done.append(i)
        if done:
            self._release(done)

    def _accept(self, seq: _Sequence, token_id: int) -> Event:
        """Record a sampled token; the event says whether the sequence ends here."""
        if token_id == EOT_ID:
            return Event(seq.seq_id, None, seq.decoder.finish(), finished=True, finish_reason="eot")
        seq.generated += 1
        text = seq.decoder.push(token_id)
        if seq.decoder.stopped:
            return Event(seq.seq_id, token_id, text, finished=True, finish_reason="stop")
        if seq.generated >= seq.budget:
            reason: FinishReason = "length" if seq.budget == seq.params.max_new_tokens else "context"
            text += seq.decoder.finish()
            if seq.decoder.stopped:  # the held-back tail completed a stop string after all
                reason = "stop"
            return Event(seq.seq_id, token_id, text, finished=True, finish_reason=reason)
        seq.pending = token_id
        return Event(seq.seq_id, token_id, text)

    def _release(self, rows: list[int]) -> None:
        """Free cache rows, moving the last active rows into the holes so rows stay 0..B-1."""
        keys, values = self._cache.keys, self._cache.values  # (L, B, n_heads, S, head_dim)
        with torch.inference_mode():  # the cache is an inference tensor; `cancel` comes here from outside `step`
            for row in sorted(rows, reverse=True):  # from the end, so a row moved in is never one still to free
                last = len(self._rows) - 1
                if row != last:
                    moved = self._rows[last]
                    n = moved.position  # positions 0..n-1 are written; `pending` is not in the cache yet
                    keys[:, row, :, :n] = keys[:, last, :, :n]
                    values[:, row, :, :n] = values[:, last, :, :n]
                    self._rows[row] = moved
                self._rows.pop()
