"""The benchmark's own CUDA-graph decode: each batch-1 decode step replayed as one captured graph.

On a GPU, batch-1 decoding is bound by kernel launches, not arithmetic: gpt2-medium's step is several hundred small
kernels. A CUDA graph replays the whole step with one launch; that needs fixed shapes and no host reads, so the step
here attends over the whole preallocated cache through a causal mask built on the device, instead of reading the
positions back as `llm.model.GPTModel.forward` does. This lives in bench/, not in the service: the service decodes
through `llm.decoding.engine` (one decode loop); this measures what graphs would add on a GPU.
"""

from __future__ import annotations

import logging
import time

import torch

from llm.decoding.sampling import EOT_ID
from llm.decoding.steps import make_cache, prefill
from llm.model import GPTModel, KVCache, _CacheView, _causal_mask

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # cuBLAS and the allocator settle on a side stream before capture, as PyTorch's docs advise


def static_decode_step(model: GPTModel, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Next-token logits (B, vocab) for ``tokens`` (B,) at ``positions`` (B,), rows 0..B-1 of ``cache``, with fixed
    shapes and no host read (attention over the whole cache, masked)."""
    input_pos = positions[:, None]  # (B, 1)
    view = _CacheView(cache, None, input_pos, cache.max_len)
    mask = _causal_mask(input_pos, cache.max_len)  # (B, 1, 1, max_len)
    x = model.tok_emb(tokens[:, None]) + model.pos_emb(input_pos)  # (B, 1, emb_dim)
    for block in model.trf_blocks:
        x = block(x, view, mask)
    return model.out_head(model.final_norm(x))[:, -1]  # (B, vocab)


class GraphedDecodeStep:
    """``step(tokens, positions)`` -> next-token logits (B, vocab), as `static_decode_step` on rows 0..B-1 of its own
    cache, which holds the model's whole context. The returned tensor is overwritten by the next call."""

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
        return static_decode_step(self._model, self._tokens, self._positions, self.cache)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._positions.copy_(positions)
        self._graph.replay()
        return self._logits


@torch.inference_mode()
def graphed_greedy(model: GPTModel, graph: GraphedDecodeStep, prompt: list[int], n: int) -> list[int]:
    """Greedy ids for ``prompt``, up to ``n``, prefilled eagerly into the graph's cache, decoded by replays."""
    device = model.tok_emb.weight.device
    logits = prefill(model, torch.tensor(prompt, device=device), graph.cache)  # (vocab,)
    position = torch.tensor([len(prompt)], device=device)
    out: list[int] = []
    for _ in range(min(n, model.config.context_length - len(prompt))):
        token = logits.argmax(dim=-1, keepdim=True)  # (1,)
        token_id = int(token)
        if token_id == EOT_ID:
            break
        out.append(token_id)
        logits = graph(token, position)[0]
        position += 1
    return out


def capture(model: GPTModel) -> tuple[GraphedDecodeStep, float]:
    """A graph for ``model`` and the seconds its capture took."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    graph = GraphedDecodeStep(model)
    torch.cuda.synchronize()
    return graph, time.perf_counter() - start
