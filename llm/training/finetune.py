"""Instruction finetuning as chapter 7 does it, as one call: data -> model -> training -> checkpoint, plot, history.

The defaults are the book's (batch 8, AdamW lr 5e-5 weight decay 0.1, 2 epochs, seed 123, max length 1024, the
85/10/5 split). ``exact=True`` runs the book's own loop (`llm.training.loops.train_exact`); the default runs the fast
loop that optimises the same loss. What comes out: the checkpoint in safetensors (and the book's ``.pth`` on request),
with LoRA adapters merged, a loss plot (PNG) and the losses as JSON, all next to the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from llm.checkpoints.common import file_sha256
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from llm.training.data import InstructionDataset, load_records, split_records
from llm.training.loops import TrainHistory, file_order_batches, mean_batch_loss, train_exact, train_fast
from llm.training.lora import add_lora, merge_lora
from llm.training.recipe import PRECISIONS, FinetuneConfig, FinetuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    checkpoint: Path
    book_checkpoint: Path | None
    plot: Path | None
    history_file: Path
    history: TrainHistory
    model_config: GPTConfig
    train_loss: float  # after training: the first eval_batches training batches, file order
    val_loss: float  # after training: the whole validation split
    examples: dict[str, int]  # train / validation / test / skipped counts
    device: str
    precision: str
    seconds: float  # wall clock of the whole run


def finetune(config: FinetuneConfig) -> FinetuneResult:
    started = time.perf_counter()
    _check(config)
    device = _device(config.device)
    amp_dtype = autocast_dtype(config, device)
    split = split_records(load_records(config.data))  # a bad file fails here, before any model is built
    model = build_model(config, device)
    max_length = min(config.max_length, model.config.context_length)
    if max_length < config.max_length:
        log.info("max length %d capped at the model's context length %d", config.max_length, max_length)
    config = replace(config, max_length=max_length)

    tokenizer = Tokenizer()
    train_set = InstructionDataset(split.train, tokenizer, max_length)
    val_set = InstructionDataset(split.validation, tokenizer, max_length)
    if len(train_set) < config.batch_size:
        raise FinetuneError(
            f"{config.data}: {len(train_set)} usable training records ({len(split.train)} in the 85% train split, "
            f"{train_set.skipped} too long) is less than one batch of {config.batch_size}; add data or lower "
            "--batch-size"
        )
    if not len(val_set):
        log.warning("%s has no usable validation records (the last 5%%): validation losses will be NaN", config.data)
    if config.lora_rank:
        add_lora(model, config.lora_rank, config.lora_alpha)
    model.to(device)
    precision = "fp32" if amp_dtype is None else "bf16"
    log.info("finetuning on %s (%s), %d train / %d validation records", device, precision, len(train_set), len(val_set))

    if config.exact:
        history = train_exact(model, train_set, val_set, config, device)
    else:
        history = train_fast(model, train_set, val_set, config, device, amp_dtype)
    train_batches = file_order_batches(train_set, config, device, config.eval_batches)
    train_loss = mean_batch_loss(model, train_batches, device, amp_dtype)
    val_loss = mean_batch_loss(model, file_order_batches(val_set, config, device), device, amp_dtype)

    if config.lora_rank:
        merge_lora(model)
    examples = {
        "train": len(train_set),
        "validation": len(val_set),
        "test": len(split.test),
        "skipped": train_set.skipped + val_set.skipped,
    }
    summary = {
        "origin": "scratchbot finetune",
        "start": str(config.checkpoint) if config.checkpoint else _fresh_description(config),
        "data": Path(config.data).name,
        "data_sha256": file_sha256(config.data),
        "examples": examples,
        "epochs": config.epochs,
        "steps": len(history.step_losses),
        "tokens": history.tokens,
        "train_seconds": round(history.train_seconds, 1),
        "train_loss": round(train_loss, 4),
        "val_loss": round(val_loss, 4),
        "exact": config.exact,
        "mask_instruction": config.mask_instruction,
        "lora_rank": config.lora_rank,
    }
    checkpoint, book = _save(model, config, summary)
    history_file = _sibling(config.out, "-history.json")
    history_file.write_text(json.dumps({**summary, "history": asdict(history)}, indent=1) + "\n")
    plot = plot_losses(history, _sibling(config.out, "-loss.png")) if config.plot else None
    return FinetuneResult(
        checkpoint=checkpoint,
        book_checkpoint=book,
        plot=plot,
        history_file=history_file,
        history=history,
        model_config=model.config,
        train_loss=train_loss,
        val_loss=val_loss,
        examples=examples,
        device=device,
        precision=precision,
        seconds=time.perf_counter() - started,
    )


def build_model(config: FinetuneConfig, device: str) -> GPTModel:
    """The starting model in fp32: a checkpoint's weights, or a preset (with shape overrides) freshly initialised."""
    if config.checkpoint is not None:
        loaded = load_checkpoint(config.checkpoint, dtype=torch.float32, n_heads=config.n_heads)
        model = GPTModel(replace(loaded.config, drop_rate=config.drop_rate))
        model.load_state_dict(loaded.model.state_dict())  # a private copy: the loaded tensors may be memory-mapped
        return model.to(device)
    model_config = GPTConfig.from_name(config.init or "gpt2-small", drop_rate=config.drop_rate, **config.shape)
    model = GPTModel(model_config).init_weights(torch.Generator().manual_seed(config.seed))
    log.info("%s: %s parameters", _fresh_description(config), f"{model.num_parameters:,}")
    return model.to(device)


def plot_losses(history: TrainHistory, path: Path) -> Path:
    """The training loss of every step and the periodic train/validation losses, against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(history.step_losses)), history.step_losses, color="tab:blue", alpha=0.35, label="train (step)")
    if history.evals:
        steps = [e.step for e in history.evals]
        ax.plot(steps, [e.train_loss for e in history.evals], color="tab:blue", label="train (eval)")
        ax.plot(steps, [e.val_loss for e in history.evals], color="tab:orange", linestyle="-.", label="validation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------


def _check(config: FinetuneConfig) -> None:
    if (config.checkpoint is None) == (config.init is None):
        raise FinetuneError("give exactly one of --checkpoint (finetune those weights) or --init PRESET (from scratch)")
    if config.checkpoint is not None and config.shape:
        raise FinetuneError("the model's shape comes from the checkpoint; drop --emb-dim/--n-layers/... or use --init")
    for name in ("epochs", "batch_size", "grad_accum", "max_length", "eval_batches"):
        if getattr(config, name) < 1:
            raise FinetuneError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    floats = (("--lr", config.lr), ("--weight-decay", config.weight_decay), ("--lora-alpha", config.lora_alpha))
    for flag, value in floats:
        if not math.isfinite(value):
            raise FinetuneError(f"{flag} must be a finite number, got {value}")
    if config.lr <= 0 or config.weight_decay < 0 or config.eval_every < 0 or config.lora_rank < 0:
        raise FinetuneError("lr must be positive; weight decay, eval-every and lora-rank must not be negative")
    if config.max_steps is not None and config.max_steps < 1:
        raise FinetuneError(f"max-steps must be at least 1, got {config.max_steps}")
    if config.precision not in PRECISIONS or config.save_dtype not in ("fp32", "bf16"):
        raise FinetuneError(f"precision is one of {', '.join(PRECISIONS)}; save dtype is fp32 or bf16")
    if config.exact and (config.grad_accum != 1 or config.compile or config.precision == "bf16"):
        raise FinetuneError("--exact runs the book's fp32 loop; drop --grad-accum, --compile and --precision bf16")
    if config.out.is_dir():
        raise FinetuneError(f"--out {config.out} is a directory; give the checkpoint's file name, e.g. sft.safetensors")
    if config.save_book and config.out.suffix == ".pth":
        raise FinetuneError(
            f"--out {config.out} ends in .pth, which is where --save-book writes the book's file; "
            "give --out a .safetensors name"
        )


def _device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneError(f"device {requested!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return requested


def autocast_dtype(config: FinetuneConfig, device: str) -> torch.dtype | None:
    """bf16 where the hardware computes in it natively; None (fp32) otherwise, and always for --exact."""
    if config.exact or config.precision == "fp32":
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_native_bf16() else None


def _cpu_has_native_bf16() -> bool:
    # Private helpers of torch.cpu; without AMX or AVX-512 BF16, bf16 matmuls are emulated and slower than fp32.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:
        return False


def _save(model: GPTModel, config: FinetuneConfig, summary: dict[str, Any]) -> tuple[Path, Path | None]:
    dtype = torch.bfloat16 if config.save_dtype == "bf16" else torch.float32
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    saved_config = replace(model.config, drop_rate=0.0)  # dropout is a training setting, not part of the model
    checkpoint = save_checkpoint(state, config.out, "safetensors", config=saved_config, metadata=summary)
    book = None
    if config.save_book:
        book = save_checkpoint(state, config.out.with_suffix(".pth"), "book", config=saved_config)
    return checkpoint, book


def _fresh_description(config: FinetuneConfig) -> str:
    shape = "".join(f", {k}={v}" for k, v in config.shape.items())
    return f"random init ({config.init}{shape}, seed {config.seed})"


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)
