"""``scratchbot finetune``: chapter 7's instruction finetuning as one command.

Registered in `bot.cli.main.COMMANDS`. Parse, call `llm.training.finetune.finetune`, print where things went; what
the user can fix becomes one line (`bot.cli.common.UserError`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bot.cli.common import UserError, refuse_overwrite

log = logging.getLogger(__name__)


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="instruction-finetune a model on Alpaca-format data (the book's chapter 7)",
        description=cmd_finetune.__doc__,
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.safetensors); plot/history beside it")
    p.add_argument("--data", type=Path, default=None, help="Alpaca JSON/JSONL (default: the bundled chapter-7 data)")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--checkpoint", type=Path, help="start from these weights (any format `inspect` reads)")
    start.add_argument("--init", metavar="PRESET", help="start from random weights: gpt2-small, gpt2-medium, ...")
    shape = p.add_argument_group(
        "shape of a fresh model (with --init; overrides the preset); with --checkpoint, --n-heads gives the head "
        "count of a checkpoint that does not record it"
    )
    for name in ("emb-dim", "n-layers", "n-heads", "context-length"):
        shape.add_argument(f"--{name}", type=int, default=None)
    train = p.add_argument_group("recipe (defaults: the book's chapter 7)")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=123)
    train.add_argument("--max-length", type=int, default=1024, help="longer records are skipped and counted")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--drop-rate", type=float, default=0.0, help="dropout while training (the book: 0)")
    train.add_argument("--mask-instruction", action="store_true", help="no loss on instruction/input tokens (ex. 7.2)")
    train.add_argument("--lora-rank", type=int, default=0, help="train only LoRA adapters of this rank (appendix E)")
    train.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale; the book multiplies by alpha")
    train.add_argument("--grad-accum", type=int, default=1, help="optimizer step every N batches")
    train.add_argument("--eval-every", type=int, default=5, help="validation loss every K steps (0: never)")
    train.add_argument("--eval-batches", type=int, default=5, help="batches per evaluation")
    run = p.add_argument_group("how it runs")
    run.add_argument("--exact", action="store_true", help="the book's train_model_simple loop, fp32, its data order")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (fast path)")
    run.add_argument(
        "--device", default=None, help="auto (cuda if present), cpu, cuda, cuda:N; default: SCRATCHBOT_DEVICE if set, "
        "else auto",
    )  # fmt: skip
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="autocast precision")
    run.add_argument("--save-dtype", default="fp32", choices=("fp32", "bf16"), help="dtype of the saved weights")
    run.add_argument("--save-book", action="store_true", help="also write the book's .pth next to --out")
    run.add_argument("--no-plot", action="store_true", help="skip the loss plot")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--force", action="store_true", help="overwrite OUT (and its .pth) if they exist")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune on Alpaca-format instruction data exactly as chapter 7 of the book does (its split, batch 8, AdamW
    5e-5, weight decay 0.1, 2 epochs, seed 123), by default with a faster loop that optimises the same loss, or with
    --exact the book's own loop. Writes OUT (safetensors), OUT-loss.png and OUT-history.json."""
    from bot.settings import load_settings
    from llm.assets import INSTRUCTION_DATA
    from llm.checkpoints.book import book_config_path
    from llm.training.data import DataError
    from llm.training.finetune import finetune
    from llm.training.recipe import FinetuneConfig, FinetuneError

    # Refused before training, not after hours of it.
    refuse_overwrite(args.out, "safetensors", args.force)
    if args.save_book:
        refuse_overwrite(args.out.with_suffix(".pth"), "book", args.force)
    settings = load_settings()  # the training device is not the serving one, unless SCRATCHBOT_DEVICE was set
    device = args.device or (settings.device if settings.is_set("device") else "auto")
    fresh = ("emb_dim", "n_layers", "context_length") + (("n_heads",) if args.init else ())
    shape = {name: value for name in fresh if (value := getattr(args, name)) is not None}
    config = FinetuneConfig(
        data=args.data or INSTRUCTION_DATA,
        out=args.out,
        checkpoint=args.checkpoint,
        n_heads=args.n_heads if args.checkpoint else None,
        init=args.init,
        shape=shape,
        drop_rate=args.drop_rate,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_length=args.max_length,
        max_steps=args.max_steps,
        mask_instruction=args.mask_instruction,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        exact=args.exact,
        compile=args.compile,
        device=device,
        precision=args.precision,
        save_dtype=args.save_dtype,
        save_book=args.save_book,
        plot=not args.no_plot,
        progress=not args.quiet,
    )
    try:
        result = finetune(config)
    except (DataError, FinetuneError, FloatingPointError) as e:
        raise UserError(str(e)) from None
    history = result.history
    steps = len(history.step_losses)
    print(
        f"trained {steps} step{'' if steps == 1 else 's'} on {result.examples['train']} records "
        f"in {result.seconds:.1f} s "
        f"({result.device}, {result.precision}, {history.tokens_per_second:,.0f} tokens/s); "
        f"train loss {result.train_loss:.3f}, validation loss {result.val_loss:.3f}"
    )
    book_config = book_config_path(result.book_checkpoint) if result.book_checkpoint else None
    for path in (result.checkpoint, result.book_checkpoint, book_config, result.plot, result.history_file):
        if path is not None:
            print(f"wrote {path}")
    return 0
