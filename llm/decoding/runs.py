"""Prompts run through an `Engine` to their end: what `scratchbot generate` and `evaluate`, and a reload's smoke
test, need. They generate on the service's own decode loop, so they cannot drift from it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from llm.decoding.engine import Engine, Event
from llm.decoding.sampling import FinishReason, SamplingParams, fit_prompt

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    text: str = ""  # the generated text, without end-of-text or the stop string
    token_ids: list[int] = field(default_factory=list)  # generated ids, end-of-text excluded
    prompt_tokens: int = 0  # tokens actually run as the prompt (after any truncation)
    truncated_tokens: int = 0  # tokens cut from the front of the prompt by the overflow policy
    finish_reason: FinishReason = "length"
    seconds: float = 0.0  # wall time from the first forward pass to the last token

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class TextStream:
    """One prompt: iterate for its text deltas as they are generated; afterwards `result` holds the whole answer.
    Raises `PromptTooLongError` at once for a prompt refused by the overflow policy."""

    def __init__(self, engine: Engine, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        self.result = GenerationResult()
        self._ids, cut = fit_prompt(prompt_ids, engine.context_length, params)
        self.result.prompt_tokens, self.result.truncated_tokens = len(self._ids), cut
        self._engine = engine
        self._params = params

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        seq_id = self._engine.submit(self._ids, self._params)
        try:
            for event in _events_until_done(self._engine, {seq_id}):
                _record(self.result, event)
                self.result.seconds = time.perf_counter() - start
                if event.text:
                    yield event.text
        finally:
            self._engine.cancel(seq_id)  # a consumer that stops early frees the row; no-op once finished


def generate_all(engine: Engine, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[GenerationResult]:
    """Every prompt to its end, as many at a time as the engine batches; results in the order of ``prompts``."""
    results: dict[int, GenerationResult] = {}
    for prompt in prompts:
        ids, cut = fit_prompt(prompt, engine.context_length, params)
        results[engine.submit(ids, params)] = GenerationResult(prompt_tokens=len(ids), truncated_tokens=cut)
    start = time.perf_counter()
    for event in _events_until_done(engine, set(results)):
        _record(results[event.seq_id], event)
        results[event.seq_id].seconds = time.perf_counter() - start
    return list(results.values())


def _events_until_done(engine: Engine, seq_ids: set[int]) -> Iterator[Event]:
    pending = set(seq_ids)
    while pending:
        for event in engine.step():
            if event.seq_id in pending:
                if event.finished:
                    pending.discard(event.seq_id)
                yield event


def _record(result: GenerationResult, event: Event) -> None:
    if event.error is not None:
        raise event.error
    if event.token_id is not None:
        result.token_ids.append(event.token_id)
    result.text += event.text
    if event.finished:
        assert event.finish_reason is not None and event.finish_reason != "error"
        result.finish_reason = event.finish_reason
