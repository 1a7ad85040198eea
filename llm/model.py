"""The GPT-2 architecture of "Build a Large Language Model (From Scratch)", chapter 4, with a KV cache.

Parameter names are the book's, so its checkpoints (``gpt2-medium355M-sft.pth`` and friends) load as they are:
``tok_emb``, ``pos_emb``, ``trf_blocks.N.att.W_query|W_key|W_value|out_proj``, ``trf_blocks.N.ff.layers.0|2``,
``trf_blocks.N.norm1|norm2.scale|shift``, ``final_norm.scale|shift``, ``out_head``. Two things differ from the
book's code and neither changes a single number it computes: attention runs through
``scaled_dot_product_attention`` (no ``att.mask`` buffer is kept; the loader drops it), and the model can read and
write a preallocated `KVCache` so generation costs one position per step instead of the whole sequence.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from llm.config import GPTConfig

log = logging.getLogger(__name__)


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated and written in place.

    Each row of the batch (a "slot") holds one sequence whose positions run from 0 upwards; rows advance
    independently, so a batch can hold sequences of different lengths (continuous batching fills and frees slots
    between steps). Positions past a row's own length may hold stale values of an earlier sequence: attention
    masks them out, because a query at position p only sees keys at positions <= p.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        max_len = config.context_length if max_len is None else max_len
        if not 0 < max_len <= config.context_length:
            raise ValueError(f"cache length must be in 1..{config.context_length}, got {max_len}")
        if batch_size <= 0:
            raise ValueError(f"cache batch size must be positive, got {batch_size}")
        shape = (config.n_layers, batch_size, config.n_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, n_heads, S, head_dim)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, n_heads, S, head_dim)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]


class _CacheView:
    """What one forward pass needs to address the cache: which rows, which positions, how far to read."""

    __slots__ = ("batch", "cache", "input_pos", "kv_len", "rows", "slots")

    def __init__(self, cache: KVCache, slots: torch.Tensor | None, input_pos: torch.Tensor, kv_len: int) -> None:
        self.cache = cache
        self.slots = slots  # (B,) rows of the cache, or None for rows 0..B-1
        self.input_pos = input_pos  # (B, T) position of every new token
        self.kv_len = kv_len  # keys at positions >= kv_len are never visible to this step
        self.batch = input_pos.shape[0]
        # The row index of every write, built once per forward pass rather than once per layer.
        rows = torch.arange(self.batch, device=input_pos.device) if slots is None else slots
        self.rows = rows[:, None]  # (B, 1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values (B, T, n_heads, head_dim); return all visible ones (B, n_heads, S, hd)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (B_cache, n_heads, S, head_dim)
        keys[self.rows, :, self.input_pos] = k  # indexed view is (B, T, n_heads, head_dim)
        values[self.rows, :, self.input_pos] = v
        if self.slots is None:
            return keys[: self.batch, :, : self.kv_len], values[: self.batch, :, : self.kv_len]
        return keys[self.slots, :, : self.kv_len], values[self.slots, :, : self.kv_len]


class LayerNorm(nn.Module):
    """The book's LayerNorm: parameters named ``scale`` and ``shift``, biased variance, eps 1e-5."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused kernel computes exactly the book's mean/var(unbiased=False) formula, in one pass.
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's tanh approximation of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(config.emb_dim, 4 * config.emb_dim),
            GELU(),
            nn.Linear(4 * config.emb_dim, config.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.W_query = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_key = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_value = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.dropout = config.drop_rate

    def forward(
        self, x: torch.Tensor, view: _CacheView | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q = self.W_query(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, n_heads, head_dim)
        k = self.W_key(x).view(b, t, self.n_heads, self.head_dim)
        v = self.W_value(x).view(b, t, self.n_heads, self.head_dim)
        q = q.transpose(1, 2)  # (B, n_heads, T, head_dim)
        if view is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, n_heads, T, head_dim)
            is_causal = True
        else:
            k, v = view.update(self.layer, k, v)  # (B, n_heads, S, head_dim)
            is_causal = False
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )  # (B, n_heads, T, head_dim)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, emb_dim)
        return self.out_proj(out)


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.att = MultiHeadAttention(config, layer)
        self.ff = FeedForward(config)
        self.norm1 = LayerNorm(config.emb_dim)
        self.norm2 = LayerNorm(config.emb_dim)
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(
        self, x: torch.Tensor, view: _CacheView | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), view, mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(config, i) for i in range(config.n_layers)])
        self.final_norm = LayerNorm(config.emb_dim)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)

    def init_weights(self, generator: torch.Generator | int | None = None) -> GPTModel:
        """GPT-2's initialisation (normal 0.02, residual projections scaled by depth); for fresh models and tests.
        An int is a seed, so callers outside `llm` need not import torch to get reproducible weights."""
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith(("norm1.scale", "norm2.scale", "final_norm.scale")):
                nn.init.ones_(p)
            elif name.endswith(("shift", "bias")):
                nn.init.zeros_(p)
            elif name.endswith(("out_proj.weight", "ff.layers.2.weight")):
                with torch.no_grad():
                    p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers), generator=generator)
            else:
                with torch.no_grad():
                    p.normal_(0.0, std, generator=generator)
        return self

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids ``idx`` (B, T); (B, 1, vocab) with ``last_only``.

        Without a cache this is the book's forward: positions 0..T-1, causal attention. With a cache, ``input_pos``
        (B, T) gives each new token's position (each row counts from 0 for its own sequence) and ``slots`` (B,)
        which cache rows the batch occupies (default: rows 0..B-1).
        """
        b, t = idx.shape
        if cache is None:
            x = self.hidden_states(idx)
        else:
            if input_pos is None:
                raise ValueError("input_pos is required when a KV cache is given")
            view, mask = self._prepare_cache(cache, input_pos, slots, b, t)
            x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(input_pos))  # (B, T, emb_dim)
            for block in self.trf_blocks:
                x = block(x, view, mask)
            x = self.final_norm(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, emb_dim): the head, the largest matrix, runs on one position only
        return self.out_head(x)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The book's forward without a cache, stopped before ``out_head``: (B, T, emb_dim) after the final norm.
        Training runs the head on the positions whose loss counts only."""
        t = idx.shape[1]
        if t > self.config.context_length:
            raise ValueError(f"sequence of {t} tokens exceeds the context length {self.config.context_length}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, emb_dim)
        for block in self.trf_blocks:
            x = block(x)
        return self.final_norm(x)

    def _prepare_cache(
        self, cache: KVCache, input_pos: torch.Tensor, slots: torch.Tensor | None, b: int, t: int
    ) -> tuple[_CacheView, torch.Tensor | None]:
        if input_pos.shape != (b, t):
            raise ValueError(f"input_pos must have shape {(b, t)}, got {tuple(input_pos.shape)}")
        # One host read per forward pass (not per layer): how far into the cache any row of this step can see.
        kv_len = int(input_pos.max()) + 1
        if kv_len > cache.max_len:
            raise ValueError(f"position {kv_len - 1} is past the end of the cache ({cache.max_len} positions)")
        if slots is None and b > cache.batch_size:
            raise ValueError(f"batch of {b} does not fit a cache of {cache.batch_size} rows")
        view = _CacheView(cache, slots, input_pos, kv_len)
        if t == 1 and bool((input_pos == kv_len - 1).all()):
            return view, None  # every row is at the newest position: all keys read are visible, no mask needed
        return view, _causal_mask(input_pos, kv_len)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _causal_mask(input_pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """(B, 1, T, kv_len), broadcast over heads: a query at position p sees the keys at positions <= p. Built on the
    device from ``input_pos`` alone, with no host read."""
    key_pos = torch.arange(kv_len, device=input_pos.device)
    return (key_pos[None, None, :] <= input_pos[:, :, None])[:, None, :, :]
