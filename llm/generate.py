"""Text generation as small pure steps: sample -> prefill -> decode one token -> a stream that stops.

The model reads and writes a preallocated `KVCache`, so each new token costs one position's worth of compute.
`generate_tokens` is the core loop (token ids); `stream_text` adds text deltas that never split a character and
stop strings that never leak into the output; `generate_batch` runs several prompts of different lengths together.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from llm.model import GPTModel, KVCache
from llm.tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:  # cuda_graph builds on this module's decode_step and make_cache
    from llm.cuda_graph import GraphedDecodeStep

log = logging.getLogger(__name__)

EOT_ID = 50256
OverflowPolicy = Literal["truncate", "error"]
FinishReason = Literal["eot", "stop", "length", "context"]


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context and the caller asked not to truncate it."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256  # upper bound on generated tokens; the context length may end generation sooner
    temperature: float = 0.0  # 0 means greedy (argmax); higher is more random
    top_k: int | None = None  # keep only the k most likely tokens before sampling
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p (nucleus sampling)
    seed: int | None = None  # makes sampling repeatable; greedy ignores it
    stop: tuple[str, ...] = ()  # generation ends before any of these strings; they are not part of the output
    overflow: OverflowPolicy = "truncate"  # a prompt too long for the context: keep its newest tokens, or refuse

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {self.overflow!r}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self, device: torch.device | str) -> torch.Generator | None:
        if self.greedy or self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from the last-position logits (B, vocab)."""
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, vocab)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already reach top_p; the most likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF draw, one uniform number per row. torch.multinomial over GPT-2's 50257 tokens took ~30 ms per row
    # on this project's CPU (torch 2.13, measured), longer than a whole decode step; this takes ~0.2 ms. float64 keeps
    # u strictly below the total, so a token of probability 0 (cut by top-k/top-p) is never drawn.
    cdf = logits.softmax(dim=-1).double().cumsum(dim=-1)  # (B, vocab)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------
# Forward steps


def prefill(model: GPTModel, prompt: torch.Tensor, cache: KVCache, slot: int = 0) -> torch.Tensor:
    """Run a prompt (T,) into cache row ``slot`` from position 0; return the last position's logits (vocab,)."""
    t = prompt.shape[0]
    input_pos = torch.arange(t, device=prompt.device)[None, :]  # (1, T)
    slots = None if slot == 0 else torch.tensor([slot], device=prompt.device)
    logits = model(prompt[None, :], cache=cache, input_pos=input_pos, slots=slots, last_only=True)  # (1, 1, V)
    return logits[0, -1]


def decode_step(
    model: GPTModel,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    slots: torch.Tensor | None = None,
    *,
    static: bool = False,
) -> torch.Tensor:
    """One new token per row: ``tokens`` (B,) at ``positions`` (B,); return next-token logits (B, vocab).
    ``static`` makes the step capturable as a CUDA graph (see `GPTModel.forward`)."""
    logits = model(tokens[:, None], cache=cache, input_pos=positions[:, None], slots=slots, static=static)  # (B,1,V)
    return logits[:, -1]


def fit_prompt(prompt_ids: Sequence[int], context_length: int, params: SamplingParams) -> tuple[list[int], int]:
    """Apply the overflow policy: the prompt ids to run and how many were cut from the front.

    At least one position is always left for the answer, and up to ``max_new_tokens`` when the prompt allows.
    """
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("the prompt is empty; give at least one token")
    room = context_length - min(params.max_new_tokens, context_length - 1)
    if len(ids) <= room:
        return ids, 0
    if params.overflow == "error":
        raise PromptTooLongError(
            f"the prompt has {len(ids)} tokens but at most {room} fit in the context of {context_length} "
            f"with {params.max_new_tokens} new tokens; shorten it or lower max_new_tokens"
        )
    cut = len(ids) - room
    log.info("prompt of %d tokens cut to its newest %d to fit the context", len(ids), room)
    return ids[cut:], cut


def _device_of(model: GPTModel) -> torch.device:
    return model.tok_emb.weight.device


def _dtype_of(model: GPTModel) -> torch.dtype:
    return model.final_norm.scale.dtype


def make_cache(model: GPTModel, batch_size: int, max_len: int) -> KVCache:
    return KVCache(model.config, batch_size, max_len, dtype=_dtype_of(model), device=_device_of(model))


# ---------------------------------------------------------------------------------------------------------------
# Streams


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


@torch.inference_mode()
def generate_tokens(
    model: GPTModel,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    result: GenerationResult | None = None,
    *,
    graph: GraphedDecodeStep | None = None,
) -> Iterator[int]:
    """Yield generated token ids one at a time; stops at end-of-text (not yielded), max_new_tokens or the context.

    ``result``, when given, is filled in as the stream advances (prompt size, finish reason, timing).
    ``graph`` (a model on a CUDA device only) runs in that graph's cache and replays each decode step as one
    captured graph; capture once, generate many times.
    """
    result = result if result is not None else GenerationResult()
    context = model.config.context_length
    ids, cut = fit_prompt(prompt_ids, context, params)
    result.prompt_tokens, result.truncated_tokens = len(ids), cut
    budget = min(params.max_new_tokens, context - len(ids))
    device = _device_of(model)
    generator = params.make_generator(device)
    start = time.perf_counter()
    if graph is not None:
        cache, decode = graph.cache, graph  # the cache holds the whole context: any prompt and budget fit
    else:
        cache = make_cache(model, 1, len(ids) + budget)
        decode = functools.partial(decode_step, model, cache=cache)
    logits = prefill(model, torch.tensor(ids, device=device), cache)
    position = torch.tensor([len(ids)], device=device)
    result.finish_reason = "length" if budget == params.max_new_tokens else "context"
    for step in range(budget):
        token = sample(logits[None, :], params, generator)  # (1,)
        token_id = int(token)
        if token_id == EOT_ID:
            result.finish_reason = "eot"
            break
        result.token_ids.append(token_id)
        result.seconds = time.perf_counter() - start
        yield token_id
        if step + 1 == budget:
            break
        logits = decode(token, position)[0]
        position += 1
    result.seconds = time.perf_counter() - start


class StopTextDecoder:
    """Token ids in, text deltas out: never half of a character, and nothing of a stop string.

    Text that could be the start of a stop string is held back until it is clear that it is not; once a stop
    string appears, the text before it is released and the decoder reports that generation should end.
    """

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()) -> None:
        self._decoder = StreamDecoder(tokenizer)
        self._stops = stops
        self._held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that token ``token_id`` releases; check `stopped` afterwards."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.push(token_id), final=False)

    def finish(self) -> str:
        """Whatever is still held back at the end of the stream."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        # Held-back text is the only place a stop string can begin, so searching held + new text finds them all.
        cut = _find_stop(text, self._stops)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0 if final else _stop_prefix_len(text, self._stops)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]


class TextStream:
    """Iterate for text deltas; afterwards `result` holds the whole answer."""

    def __init__(self, model: GPTModel, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams):
        self.result = GenerationResult()
        self._tokens = generate_tokens(model, prompt_ids, params, self.result)
        self._text = StopTextDecoder(tokenizer, params.stop)

    def __iter__(self) -> Iterator[str]:
        for token_id in self._tokens:
            yield from self._emit(self._text.push(token_id))
            if self._text.stopped:
                self._tokens.close()
                break
        yield from self._emit(self._text.finish())
        if self._text.stopped:
            self.result.finish_reason = "stop"

    def _emit(self, text: str) -> Iterator[str]:
        if text:
            self.result.text += text
            yield text


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index in ``text`` where the earliest stop string begins, if any."""
    found = [i for s in stops if (i := text.find(s)) != -1]
    return min(found) if found else None


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def stream_text(
    model: GPTModel, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams
) -> TextStream:
    return TextStream(model, tokenizer, prompt_ids, params)


def generate(model: GPTModel, tokenizer: Tokenizer, prompt: str, params: SamplingParams) -> GenerationResult:
    """Generate a whole answer for a raw prompt string."""
    stream = stream_text(model, tokenizer, tokenizer.encode(prompt), params)
    for _ in stream:
        pass
    return stream.result


# ---------------------------------------------------------------------------------------------------------------
# Several prompts at once


@torch.inference_mode()
def generate_batch(model: GPTModel, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
    """Generated ids for each prompt, the prompts advancing together one decode step at a time.

    Each prompt is prefilled into its own cache row; decode steps then run every unfinished row in one forward
    pass, each at its own position. Rows that finish (end-of-text, budget, context) leave the batch.
    """
    if not prompts:
        return []
    context = model.config.context_length
    fitted = [fit_prompt(p, context, params)[0] for p in prompts]
    budgets = [min(params.max_new_tokens, context - len(ids)) for ids in fitted]
    device = _device_of(model)
    generator = params.make_generator(device)
    cache = make_cache(model, len(fitted), max(len(ids) + b for ids, b in zip(fitted, budgets, strict=True)))
    last = torch.stack(
        [prefill(model, torch.tensor(ids, device=device), cache, slot) for slot, ids in enumerate(fitted)]
    )  # (B, vocab)
    outputs: list[list[int]] = [[] for _ in fitted]
    active = list(range(len(fitted)))
    positions = torch.tensor([len(ids) for ids in fitted], device=device)
    while active:
        tokens = sample(last, params, generator)  # (B_active,)
        still: list[int] = []
        for row, token_id in zip(active, tokens.tolist(), strict=True):
            if token_id == EOT_ID:
                continue
            outputs[row].append(token_id)
            if len(outputs[row]) < budgets[row]:
                still.append(row)
        if not still:
            break
        keep = [active.index(r) for r in still]
        slots = torch.tensor(still, device=device)
        last = decode_step(model, tokens[keep], positions[still], cache, slots)
        positions[still] += 1
        active = still
    return outputs
