"""The model's two forward steps over a preallocated `KVCache`: a prompt's prefill and one decode step for a batch.
Each new token costs one position's worth of compute."""

from __future__ import annotations

import logging

import torch

from llm.model import GPTModel, KVCache

log = logging.getLogger(__name__)


def prefill(model: GPTModel, prompt: torch.Tensor, cache: KVCache, slot: int = 0) -> torch.Tensor:
    """Run a prompt (T,) into cache row ``slot`` from position 0; return the last position's logits (vocab,)."""
    t = prompt.shape[0]
    input_pos = torch.arange(t, device=prompt.device)[None, :]  # (1, T)
    slots = None if slot == 0 else torch.tensor([slot], device=prompt.device)
    logits = model(prompt[None, :], cache=cache, input_pos=input_pos, slots=slots, last_only=True)  # (1, 1, V)
    return logits[0, -1]


def decode_step(
    model: GPTModel, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """One new token per row: ``tokens`` (B,) at ``positions`` (B,); return next-token logits (B, vocab)."""
    logits = model(tokens[:, None], cache=cache, input_pos=positions[:, None], slots=slots)  # (B, 1, vocab)
    return logits[:, -1]


def device_of(model: GPTModel) -> torch.device:
    return model.tok_emb.weight.device


def dtype_of(model: GPTModel) -> torch.dtype:
    return model.final_norm.scale.dtype


def make_cache(model: GPTModel, batch_size: int, max_len: int) -> KVCache:
    return KVCache(model.config, batch_size, max_len, dtype=dtype_of(model), device=device_of(model))
