"""LoRA as appendix E of the book builds it: a low-rank update beside every ``nn.Linear``, merged away on save.

The book's convention is kept: ``A`` is (in, rank) with Kaiming-uniform init, ``B`` is (rank, out) with zeros (so the
model starts out unchanged), and the update is ``alpha * (x @ A @ B)``: scaled by ``alpha`` itself, not by
``alpha / rank`` as in the LoRA paper and PEFT. The book's rank 16, alpha 16 therefore means a scale of 16.
Merging folds it into the weight, ``W + alpha * (A @ B).T``, which leaves a plain `GPTModel` in the book's names.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)


class LoRALayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))  # (in, rank)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))  # (rank, out): zero, so training starts from the base model
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x @ self.A @ self.B)

    def delta_weight(self) -> torch.Tensor:
        """The update in ``nn.Linear.weight``'s layout (out, in)."""
        return self.alpha * (self.A @ self.B).T


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)


def add_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Freeze every parameter of ``model``, then wrap each ``nn.Linear`` (out_head included, as the book does)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    for p in model.parameters():
        p.requires_grad = False
    _replace_linear_with_lora(model, rank, alpha)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA rank %d alpha %g: %s of %s parameters trainable", rank, alpha, f"{trainable:,}", f"{total:,}")
    return model


def _replace_linear_with_lora(module: nn.Module, rank: int, alpha: float) -> None:
    # The book's replace_linear_with_lora: depth-first, in module order (which fixes the order A is initialised in).
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, LinearWithLoRA(child, rank, alpha))
        else:
            _replace_linear_with_lora(child, rank, alpha)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer and unwrap it; the result has no LoRA modules left."""
    for name, child in model.named_children():
        if isinstance(child, LinearWithLoRA):
            linear = child.linear
            merged = linear.weight.float() + child.lora.delta_weight().float()
            linear.weight.copy_(merged.to(linear.weight.dtype))
            setattr(model, name, linear)
        else:
            merge_lora(child)
    return model
