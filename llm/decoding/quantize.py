"""Reduced-precision inference: a loaded `GPTModel` in bfloat16, or with int8 weight-only linear layers.

Decoding one token reads every weight once, so on a CPU its speed is set by how many bytes the weights take:
fp32 reads 4 bytes per parameter, ``bf16`` 2 and ``int8`` 1 (plus one scale per output channel). ``int8`` keeps
activations, embeddings, LayerNorms and the KV cache in bfloat16 and quantizes only the weight matrices of every
``nn.Linear`` (``out_head`` included), symmetrically with one scale per output channel.

Bytes alone are not the whole story: the kernel matters. On this project's CPU (2 Sapphire Rapids cores, torch
2.13) a one-row bf16 ``F.linear`` streams weights at about half the rate fp32 does, so bf16 would gain little;
``torch.mv`` on the same bf16 matrix is 1.4-1.6x faster, and `MatVecLinear` routes single rows through it.

Both are CPU-first. On a GPU, bf16 is the mode to use (cuBLAS handles one row well, so `MatVecLinear` leaves it
to ``F.linear`` there); int8 runs but converts each matrix to bf16 on every call, which saves memory, not time.

The module tree keeps the book's names: the replacement layers sit at the attribute paths of the ``nn.Linear``
they replace and hold their matrix as ``weight``, so ``trf_blocks.3.att.W_query.weight`` still exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from llm.model import GPTModel

log = logging.getLogger(__name__)

Mode = Literal["fp32", "bf16", "int8"]
MODES: tuple[str, ...] = get_args(Mode)

# The fused CPU kernel reads the reduction dimension in blocks of 16 and crashes the process on any other width
# (measured on torch 2.13); such layers take the dequantizing path instead.
_PACK_BLOCK = 16
# From this many rows on (a prompt's prefill, a large batch) one bf16 GEMM over the converted matrix beats the
# fused kernel, whose cost grows about linearly in the rows (3072x768: 56us at 1 row, 2.8ms at 100 rows vs 0.55ms).
_PACK_MAX_ROWS = 16
# oneDNN keeps what it builds for every bf16 GEMM shape it meets, and each new prompt length is a new shape: serving
# every length from 20 to 480 tokens once grew the process by ~700 MB, and again by ~100 MB on a second pass (the
# soak benchmark, bench/soak.py). Above this many rows (a prompt's prefill) they are rounded up to a multiple of it
# (zero rows, sliced off again; rows of a matrix product do not mix): at most 64 + context/64 shapes per matrix,
# for at most 63 rows of extra work per prompt. Fewer rows (a decode step's batch) are left as they are.
_ROW_BUCKET = 64


def bucketed_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` of (rows, in) on a CPU, more than `_ROW_BUCKET` rows padded to a multiple of it: the same values
    for the real rows, and a bounded number of GEMM shapes however many prompt lengths the service meets."""
    rows = x2d.shape[0]
    padded = -(-rows // _ROW_BUCKET) * _ROW_BUCKET
    if rows <= _ROW_BUCKET or padded == rows or not x2d.is_cpu:
        return F.linear(x2d, weight, bias)
    return F.linear(F.pad(x2d, (0, 0, 0, padded - rows)), weight, bias)[:rows]


class MatVecLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose single-row input on a CPU runs as ``torch.mv``.

    A decode step at batch 1 multiplies every matrix by one vector; for bf16 weights ``torch.mv`` reads them
    1.4-1.6x faster than the GEMM behind ``F.linear`` (gpt2-small's 3072x768 and 50257x768 matrices, measured).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> MatVecLinear:
        """A `MatVecLinear` sharing ``linear``'s parameters (no copy)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if x.numel() != self.in_features or not x.is_cpu:
            if weight.dtype == torch.bfloat16 and x.is_cpu:
                y = bucketed_linear(x.reshape(-1, self.in_features), weight, bias)
                return y.view(*x.shape[:-1], self.out_features)
            return F.linear(x, weight, bias)
        y = torch.mv(weight, x.reshape(-1))  # (out,)
        if bias is not None:
            y = y.add_(bias)  # mv then add measured faster than the fused addmv for bf16
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight (out, in), a scale per output channel and bfloat16 activations.

    ``weight * scales[:, None]`` is the dequantized matrix; the output is ``x @ that.T + bias`` in the activation
    dtype. Few rows go through ``torch._weight_int8pack_mm``, which reads the int8 matrix directly (decode steps:
    about 2.5x faster than bf16 ``F.linear`` on a 3072x768 matrix); many rows through a bf16 GEMM.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        """Quantize ``linear`` symmetrically per output channel: scale = max |row| / 127, weights in [-127, 127]."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=dtype)
        q.to(linear.weight.device)
        with torch.no_grad():
            w = linear.weight.float()  # (out, in)
            # Round the scales to the activation dtype first, so weight * scales is exactly what forward computes.
            scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(dtype)  # (out,)
            q.weight.copy_(torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8))
            q.scales.copy_(scales)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        return q

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, (out, in), in fp32."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Runs ~150 times per decode step of gpt2-medium: buffers are read once and no-op conversions skipped.
        weight, scales, bias = self.weight, self.scales, self.bias
        x2d = x.reshape(-1, self.in_features)  # (B*T, in)
        if x2d.dtype != scales.dtype:
            x2d = x2d.to(scales.dtype)
        if x2d.shape[0] < _PACK_MAX_ROWS and self.in_features % _PACK_BLOCK == 0 and x2d.is_cpu:
            y = torch._weight_int8pack_mm(x2d.contiguous(), weight, scales)  # (B*T, out)
        else:
            # Per-output-channel scales commute with the matmul: x @ (W * s[:, None]).T == (x @ W.T) * s.
            y = bucketed_linear(x2d, weight.to(scales.dtype)).mul_(scales)  # (B*T, out)
        if bias is not None:
            y = y.add_(bias)
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_model(model: GPTModel, mode: Mode) -> GPTModel:
    """Convert ``model`` in place to an inference precision and return it (the same object, in eval mode).

    - ``"fp32"``: every parameter in float32 (the reference).
    - ``"bf16"``: every parameter in bfloat16, each ``nn.Linear`` a `MatVecLinear` (same parameters); the KV cache
      `llm.decoding.steps.make_cache` builds follows (it takes the dtype of ``final_norm.scale``).
    - ``"int8"``: every ``nn.Linear`` (``out_head`` included) becomes an `Int8Linear` at the same attribute path;
      everything else, and so the activations and the KV cache, is bfloat16.

    An int8 model cannot be converted again (its full-precision weights are gone): load the checkpoint afresh.
    """
    if mode not in MODES:
        raise ValueError(f"unknown precision mode {mode!r}; choose one of: {', '.join(MODES)}")
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("the model is already int8-quantized; load the checkpoint again to use another mode")
    model.eval()
    if mode == "fp32":
        return model.float()
    if mode == "bf16":
        replaced = _replace_linears(model, MatVecLinear.from_linear)
        log.info("converted the model to bfloat16 (%d linear layers with a matrix-vector path)", replaced)
        return model.to(torch.bfloat16)
    # Quantize from the weights as given (fp32 or bf16), then bring the rest of the model to bfloat16.
    replaced = _replace_linears(model, Int8Linear.from_linear)
    log.info("quantized %d linear layers to int8 (weight-only, per output channel)", replaced)
    return model.to(torch.bfloat16)


def _replace_linears(model: nn.Module, convert: Callable[[nn.Linear], nn.Module]) -> int:
    """Put ``convert(linear)`` at the attribute path of every ``nn.Linear`` in ``model``; return how many."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, convert(linear))
    return len(linears)
