"""One decode step captured in a CUDA graph: on a GPU, batch-1 decoding is bound by kernel launches, not arithmetic.

gpt2-medium's step is several hundred small kernels; launched one by one from Python they cost more than the
memory traffic they do. A CUDA graph replays the whole step with one launch. That needs fixed shapes and no host
reads, which is what ``GPTModel.forward(static=True)`` gives: attention over the whole preallocated cache through a
mask built on the device. The step reads its inputs from, and writes its logits to, buffers owned by this object.
"""

from __future__ import annotations

import logging

import torch

from llm.generate import decode_step, make_cache
from llm.model import GPTModel

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # cuBLAS and the allocator settle on a side stream before capture, as PyTorch's docs advise


class GraphedDecodeStep:
    """``step(tokens, positions)`` -> next-token logits (B, vocab), like `llm.generate.decode_step` on rows 0..B-1
    of its own cache, which holds the model's whole context. Capturing costs tens of milliseconds, so one object
    serves many generations. The returned tensor is overwritten by the next call: copy what must outlive it."""

    def __init__(self, model: GPTModel, batch_size: int = 1) -> None:
        device = model.tok_emb.weight.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device; this one is on {device}")
        self._model = model
        self.cache = cache = make_cache(model, batch_size, model.config.context_length)
        self._tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Capture writes keys and values at the last position: no query sees it until a step writes it for real.
        self._positions = torch.full((batch_size,), cache.max_len - 1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_STEPS):
                self._forward()
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._logits = self._forward()

    def _forward(self) -> torch.Tensor:
        return decode_step(self._model, self._tokens, self._positions, self.cache, static=True)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._positions.copy_(positions)
        self._graph.replay()
        return self._logits
