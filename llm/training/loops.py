"""The two training loops behind `llm.training.finetune`: the book's, step for step, and a fast one with the same
objective.

`train_exact` is chapter 7's ``train_model_simple``: the book's DataLoaders (``torch.manual_seed`` before them and
again before training, shuffled training batches with ``drop_last``), ``calc_loss_batch`` (cross-entropy over the
flattened logits), zero_grad/backward/step every batch, the periodic ``evaluate_model`` on ``eval_batches`` batches of
each loader, fp32. The evaluations are part of the recipe: each one starts a new pass over the shuffled training
loader, which draws from torch's global generator and so decides the order of the next epoch.

`train_fast` optimises the same loss, the mean token cross-entropy over the targets that are not -100, but spends
less to get it: batches of similar length (little padding), the output head run only at positions that have a target
(the 50257-wide head is the largest matrix; padding and masked prompt positions never reach it), bf16 autocast and
fused AdamW where the hardware has them, optional ``torch.compile``, and gradient accumulation that weights every
token equally across micro-batches.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from llm.model import GPTModel
from llm.tokenizer import END_OF_TEXT_ID
from llm.training.data import IGNORE_INDEX, InstructionDataset, collate_batch, length_grouped_batches

if TYPE_CHECKING:
    from llm.training.recipe import FinetuneConfig

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T)


@dataclass(frozen=True)
class EvalPoint:
    step: int  # optimizer steps taken when it was measured, 0-based like the book's global_step
    tokens_seen: int  # real (non-padding) tokens trained on so far
    train_loss: float
    val_loss: float


@dataclass
class TrainHistory:
    step_losses: list[float] = field(default_factory=list)  # the training loss of every optimizer step
    step_tokens: list[int] = field(default_factory=list)  # real tokens of every step (padding excluded)
    step_positions: list[int] = field(default_factory=list)  # positions computed, padding included
    step_seconds: list[float] = field(default_factory=list)  # wall clock of every step; evaluations excluded
    evals: list[EvalPoint] = field(default_factory=list)
    eval_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(self.step_tokens)

    @property
    def train_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        seconds = self.train_seconds
        return self.tokens / seconds if seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------------
# The book's loop


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: GPTModel) -> torch.Tensor:
    """The book's ``calc_loss_batch``: mean cross-entropy of the flattened logits; -100 targets are ignored."""
    logits = model(input_batch)  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(loader: Iterator[Batch] | DataLoader, model: GPTModel, num_batches: int | None = None) -> float:
    """The book's ``calc_loss_loader``: the mean of the first ``num_batches`` batch losses (all when None)."""
    total, counted = 0.0, 0
    for i, (inputs, targets) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        total += calc_loss_batch(inputs, targets, model).item()
        counted += 1
    return total / counted if counted else float("nan")


def train_exact(
    model: GPTModel, train_set: InstructionDataset, val_set: InstructionDataset, config: FinetuneConfig, device: str
) -> TrainHistory:
    collate = partial(
        collate_batch, allowed_max_length=config.max_length, mask_prompt=config.mask_instruction, device=device
    )
    torch.manual_seed(config.seed)
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, collate_fn=collate, shuffle=True, drop_last=True, num_workers=0
    )
    val_loader = DataLoader(
        val_set, batch_size=config.batch_size, collate_fn=collate, shuffle=False, drop_last=False, num_workers=0
    )
    torch.manual_seed(config.seed)  # the book seeds again right before it builds the optimizer and trains
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = TrainHistory()
    total = _total_steps(len(train_loader), config)
    bar = _progress(total, config.progress)

    def evaluate() -> tuple[float, float]:
        train_loss = calc_loss_loader(train_loader, model, config.eval_batches)
        return train_loss, calc_loss_loader(val_loader, model, config.eval_batches)

    global_step = -1
    for _epoch in range(config.epochs):
        model.train()
        for inputs, targets in train_loader:
            started = time.perf_counter()
            optimizer.zero_grad()
            loss = calc_loss_batch(inputs, targets, model)
            loss.backward()
            optimizer.step()
            global_step += 1
            _count(history, inputs, loss.item(), started)
            if _step_done(model, history, bar, config, global_step, total, evaluate):
                bar.close()
                return history
    bar.close()
    return history


# ---------------------------------------------------------------------------------------------------------------
# The fast loop


def token_loss_sum(trunk: Callable[[torch.Tensor], torch.Tensor], model: GPTModel, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy of the targets that are not -100; the head runs only at those positions."""
    inputs, targets = batch
    hidden = trunk(inputs)  # (B, T, emb_dim)
    keep = targets != IGNORE_INDEX  # (B, T)
    logits = model.out_head(hidden[keep])  # (N, vocab), N = targets that count
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def train_fast(
    model: GPTModel,
    train_set: InstructionDataset,
    val_set: InstructionDataset,
    config: FinetuneConfig,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> TrainHistory:
    generator = torch.Generator().manual_seed(config.seed)  # batch order; separate from dropout's global generator
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CUDA, and CPU since torch 2.4) updates every tensor in one pass: the book's AdamW, faster.
    fused = torch.device(device).type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    trunk = model.hidden_states
    if config.compile:
        trunk = torch.compile(trunk, dynamic=True)

    def collate(indices: Sequence[int]) -> Batch:
        examples = [train_set[i] for i in indices]
        return collate_batch(
            examples, allowed_max_length=config.max_length, mask_prompt=config.mask_instruction, device=device
        )

    # Fixed evaluation batches: the first of each split in file order. For validation these are exactly the book's
    # (its validation loader is not shuffled); for training the book takes a fresh random sample each time.
    train_eval = file_order_batches(train_set, config, device, config.eval_batches)
    val_eval = file_order_batches(val_set, config, device, config.eval_batches)
    n = config.batch_size
    history = TrainHistory()
    total = _total_steps(len(train_set) // n, config)
    bar = _progress(total, config.progress)

    def evaluate() -> tuple[float, float]:
        train_loss = mean_batch_loss(model, train_eval, device, autocast_dtype, trunk)
        return train_loss, mean_batch_loss(model, val_eval, device, autocast_dtype, trunk)

    step = -1
    for _epoch in range(config.epochs):
        batches = length_grouped_batches(train_set.lengths, n, generator)
        for start in range(0, len(batches), config.grad_accum):
            started = time.perf_counter()
            model.train()
            window = [collate(b) for b in batches[start : start + config.grad_accum]]
            counted = sum(int((t != IGNORE_INDEX).sum()) for _, t in window)
            step_loss = torch.zeros((), device=device)
            for batch in window:
                with _autocast(device, autocast_dtype):
                    loss_sum = token_loss_sum(trunk, model, batch)
                (loss_sum / counted).backward()  # every token of the window weighs the same
                step_loss += loss_sum.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            _count(history, torch.cat([i.flatten() for i, _ in window]), (step_loss / counted).item(), started)
            if _step_done(model, history, bar, config, step, total, evaluate):
                bar.close()
                return history
    bar.close()
    return history


def file_order_batches(
    dataset: InstructionDataset, config: FinetuneConfig, device: str, limit: int | None = None
) -> list[Batch]:
    """Batches of ``dataset`` in file order, the last one possibly short (the book's validation loader)."""
    n = config.batch_size
    starts = list(range(0, len(dataset), n))[:limit]
    return [
        collate_batch(
            [dataset[i] for i in range(s, min(s + n, len(dataset)))],
            allowed_max_length=config.max_length,
            mask_prompt=config.mask_instruction,
            device=device,
        )
        for s in starts
    ]


def mean_batch_loss(
    model: GPTModel,
    batches: Sequence[Batch],
    device: str,
    autocast_dtype: torch.dtype | None = None,
    trunk: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """The mean of per-batch mean token losses, as the book's ``calc_loss_loader`` averages; NaN for no batches."""
    trunk = trunk or model.hidden_states
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(device, autocast_dtype):
        losses = [token_loss_sum(trunk, model, b) / (b[1] != IGNORE_INDEX).sum() for b in batches]
    model.train(was_training)
    return torch.stack(losses).mean().item() if losses else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Shared bookkeeping


def _autocast(device: str, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def _total_steps(batches_per_epoch: int, config: FinetuneConfig) -> int:
    steps = math.ceil(batches_per_epoch / config.grad_accum) * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def _count(history: TrainHistory, inputs: torch.Tensor, loss: float, started: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"the training loss became {loss} at step {len(history.step_losses)}; lower the learning rate"
        )
    history.step_losses.append(loss)
    history.step_tokens.append(int((inputs != END_OF_TEXT_ID).sum()))  # text never encodes to 50256: rest is padding
    history.step_positions.append(inputs.numel())
    history.step_seconds.append(time.perf_counter() - started)


def _step_done(
    model: GPTModel,
    history: TrainHistory,
    bar: tqdm,
    config: FinetuneConfig,
    step: int,
    total: int,
    measure: Callable[[], tuple[float, float]],
) -> bool:
    """After an optimizer step: evaluate when due, show progress; True once the last step has run."""
    if config.eval_every and step % config.eval_every == 0:
        _evaluate(model, history, step, measure)
    _report(bar, history)
    return step + 1 >= total


def _evaluate(model: GPTModel, history: TrainHistory, step: int, measure: Callable[[], tuple[float, float]]) -> None:
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        train_loss, val_loss = measure()
    model.train()
    history.evals.append(EvalPoint(step, history.tokens, train_loss, val_loss))
    history.eval_seconds += time.perf_counter() - started
    log.info("step %d: train loss %.3f, val loss %.3f", step, train_loss, val_loss)


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="step", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _report(bar: tqdm, history: TrainHistory) -> None:
    postfix = {"loss": f"{history.step_losses[-1]:.3f}"}
    if history.evals:
        postfix["val"] = f"{history.evals[-1].val_loss:.3f}"
    postfix["tok/s"] = f"{history.tokens_per_second:,.0f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)
