"""The finetuning recipe as data: what `llm.training.finetune` trains, from where, how long and how. Its defaults are
the book's chapter 7 (batch 8, AdamW lr 5e-5, weight decay 0.1, 2 epochs, seed 123, max length 1024)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


class FinetuneError(ValueError):
    """Options that cannot work together, or data too small to train on; the message says what to change."""


@dataclass(frozen=True)
class FinetuneConfig:
    data: Path  # Alpaca-format JSON or JSONL; split 85/10/5 in file order
    out: Path  # the safetensors checkpoint to write; plot and history land next to it
    checkpoint: Path | None = None  # start from these weights (any format load_checkpoint reads) ...
    n_heads: int | None = None  # ... whose head count, if the checkpoint does not record it
    init: str | None = None  # ... or from a fresh random model of this preset (gpt2-small, ...)
    shape: dict[str, int] = field(default_factory=dict)  # overrides of the preset's emb_dim/n_layers/...
    drop_rate: float = 0.0  # the book finetunes without dropout
    epochs: int = 2
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 123
    max_length: int = 1024  # the collate's allowed_max_length; longer records are skipped (and counted)
    max_steps: int | None = None  # stop early after this many optimizer steps (benchmarks, smoke tests)
    mask_instruction: bool = False  # exercise 7.2: no loss on the instruction/input tokens
    lora_rank: int = 0  # 0 trains every weight; >0 trains only LoRA adapters of this rank (appendix E)
    lora_alpha: float = 16.0  # the book's LoRA scale (it multiplies by alpha, not alpha/rank)
    grad_accum: int = 1  # optimizer step every N batches of batch_size (effective batch N x batch_size)
    eval_every: int = 5  # validation loss every K optimizer steps (the book's eval_freq); 0 never
    eval_batches: int = 5  # batches per evaluation (the book's eval_iter)
    exact: bool = False  # the book's loop, fp32, its data order: per-step losses equal train_model_simple's
    compile: bool = False  # torch.compile the transformer (fast path only)
    device: str = "auto"  # cuda when there is one, else cpu
    precision: str = "auto"  # autocast: bf16 on CUDA and on CPUs with native bf16 (AMX/AVX-512), else fp32
    save_dtype: str = "fp32"  # dtype of the saved weights: fp32, or bf16 for half the size
    save_book: bool = False  # also write the book's .pth next to the safetensors file
    plot: bool = True  # write <out>-loss.png
    progress: bool = True  # a progress bar on standard error
