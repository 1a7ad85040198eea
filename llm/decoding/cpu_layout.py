"""Weight layouts that make a batched decode step fast on a CPU, without changing the value of any weight.

A decode step multiplies every weight matrix by a few rows (one per sequence in the batch). One row runs as a
memory-bound matrix-vector product; for a few rows the GEMM kernels matter, and on this project's CPU (2 Sapphire
Rapids cores, torch 2.13, MKL + oneDNN) two changes pay off, measured on gpt2-small with one thread:

- `batch_friendly_layout`: store each fp32 ``nn.Linear`` weight in (in, out) order. MKL then multiplies 8 rows by
  the 3072x768 feed-forward matrices in 0.5-0.6 ms instead of 1.0-1.3 ms; one row and prompt-sized inputs are no
  slower. Values, shapes, names and the state dict are unchanged.
- `pack_head`: the 50257x768 output head, the largest matrix, also gets a oneDNN-packed copy for steps of several
  rows: 8 rows in 14-19 ms instead of 25-35 ms; one row keeps MKL's matrix-vector path (9-13 ms, where oneDNN took
  11-16 ms). It costs one more copy of the head (154 MB for gpt2-small); a torch without the (private) oneDNN ops
  simply keeps the plain head.

`bot.inference.local` applies both to the model it serves (`prepare_for_batches`); the numbers it gives stay those
of the book's model up to float rounding.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from llm.model import GPTModel

log = logging.getLogger(__name__)


def prepare_for_batches(model: GPTModel, max_rows: int) -> None:
    """Apply both layouts to an fp32 CPU model about to decode up to ``max_rows`` rows per step (in place)."""
    batch_friendly_layout(model)
    if max_rows > 1:
        pack_head(model, max_rows)


def batch_friendly_layout(model: nn.Module) -> int:
    """Store each fp32 CPU ``nn.Linear`` weight as the transpose of a contiguous (in, out) matrix; return how many.

    A weight tied to the token embedding moves with it; the embedding reads rows of it either way.
    """
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is not nn.Linear:  # not subclasses: bf16 and int8 layers have their own kernels
                continue
            weight = module.weight
            # A weight that is not contiguous is already in (in, out) order: converting twice changes nothing.
            if weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()
                changed += 1
    return changed


class PackedHead(nn.Module):
    """An output head that runs one row through its weight as stored and several rows through a packed copy.

    The state dict is the linear layer's (``weight``, ``bias``): the packed copy is derived, not saved. It is made
    for inference; in training mode, or off the CPU, every call takes the plain path.
    """

    def __init__(self, linear: nn.Linear, packed: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: a head tied to the embedding stays tied
        self.bias = linear.bias
        self._packed = packed  # a plain attribute, so it stays out of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features or self.training or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_head(model: GPTModel, max_rows: int) -> bool:
    """Make ``model.out_head`` a `PackedHead` (oneDNN packed for ``max_rows`` rows); False where that cannot be done."""
    head = model.out_head
    if type(head) is not nn.Linear or head.weight.dtype != torch.float32 or head.weight.device.type != "cpu":
        return False  # reduced precision has its own head kernels; a PackedHead is packed already
    weight = head.weight.detach()
    probe = torch.randn(2, head.in_features, generator=torch.Generator().manual_seed(0))  # (2, in)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), max_rows)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, head.bias, "none", [], "")  # (2, out)
    except (AttributeError, RuntimeError, NotImplementedError) as e:  # a torch built without oneDNN, or renamed ops
        log.info("oneDNN packed linear unavailable (%s); batched decode steps use the plain head", e)
        return False
    with torch.no_grad():
        expected = F.linear(probe, weight, head.bias)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        log.warning("oneDNN packed head disagrees with the plain one; keeping the plain head")
        return False
    model.out_head = PackedHead(head, packed)
    return True
