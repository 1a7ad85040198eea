"""What the `scratchbot` commands share: the user-error type, the settings with flags laid over them, the
options that load a model, and the rules for an answer's length and for overwriting a checkpoint.

Every command module imports this one and nothing imports them but `bot.cli.main`: no cycles.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings
    from llm.model import GPTModel

log = logging.getLogger(__name__)


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


def positive_int(raw: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not at least 1")
    return value


def add_checkpoint_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, help=f"a file or a Hugging Face directory; {default}")
    add_n_heads_option(p)


def add_n_heads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-heads", type=int, default=None, metavar="N",
        help="attention heads of a checkpoint that does not record them (a book .pth without its .json)",
    )  # fmt: skip


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: SCRATCHBOT_DEVICE, cpu)")
    p.add_argument(
        "--precision",
        default=None,
        choices=("fp32", "bf16", "int8"),
        help="fp32 (exact), bf16, or int8 weight-only quantization (fastest on a CPU); default: SCRATCHBOT_PRECISION "
        "(int8)",
    )


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings every command reads (environment and .env), with the command line's flags laid over them."""
    from pydantic import ValidationError

    from bot.settings import Settings, load_settings

    settings = load_settings()
    overrides = {
        name: value
        for name in ("checkpoint", "device", "precision", "max_new_tokens", "temperature", "top_k", "top_p")
        if (value := getattr(args, name, None)) is not None
    }
    try:
        checked = Settings.model_validate(overrides)  # a flag takes the values its setting takes
    except ValidationError as e:
        flags = (f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" for err in e.errors())
        raise UserError("; ".join(flags)) from None
    return settings.model_copy(update={name: getattr(checked, name) for name in overrides})


def answer_length(settings: Settings, args: argparse.Namespace, context_length: int, *, raw: bool = False) -> int:
    """The answer length to use on a model of ``context_length``: the flag or setting if the context holds it beside
    a prompt, a UserError if it was asked for and does not fit, the default lowered to fit if it was not asked for."""
    from llm.prompts import answer_length_problem, max_new_tokens_limit
    from llm.tokenizer import Tokenizer

    tokenizer = Tokenizer()
    wanted = settings.max_new_tokens
    problem = answer_length_problem(wanted, context_length, tokenizer, raw=raw)
    if problem is None:
        return wanted
    asked = args.max_new_tokens is not None or settings.is_set("max_new_tokens")
    if asked or answer_length_problem(1, context_length, tokenizer, raw=raw):
        source = "--max-new-tokens " if args.max_new_tokens is not None else "SCRATCHBOT_MAX_NEW_TOKENS="
        raise UserError(
            f"{source}{wanted} is too long for this model: {problem}"
            if asked
            else f"this model cannot answer: {problem}"
        )
    limit = max_new_tokens_limit(context_length, tokenizer, raw=raw)
    log.info("max_new_tokens %d lowered to %d for a context of %d tokens", wanted, limit, context_length)
    return limit


def load_model(settings: Settings, n_heads: int | None) -> GPTModel:
    """The checkpoint the settings name (or `run` would serve), on their device, in their precision."""
    from bot.core.checkpoint_names import find_checkpoint
    from llm.checkpoints.load import load_checkpoint
    from llm.decoding.quantize import quantize_model

    path = find_checkpoint(settings.checkpoint, settings.checkpoints_dir)
    loaded = load_checkpoint(path, device=settings.device, n_heads=n_heads)
    return quantize_model(loaded.model, settings.precision)


def refuse_overwrite(dst: Path, fmt: str, force: bool) -> None:
    """A checkpoint is hours of training: never replace one unless told to."""
    from llm.checkpoints.save import written_paths

    if fmt != "hf" and dst.is_dir():
        raise UserError(f"{dst} is a directory; give the checkpoint's file path, e.g. {dst / 'model.safetensors'}")
    existing = [path for path in written_paths(dst, fmt) if path.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists; give another destination, or --force to overwrite it")
