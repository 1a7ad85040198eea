"""`scratchbot` command line: parse arguments, call library code, turn user errors into one clear line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli_finetune import add_finetune
from bot.cli_models import add_download, add_evaluate

if TYPE_CHECKING:
    from bot.settings import Settings
    from llm.model import GPTModel

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported lazily so `scratchbot --help` stays fast (torch takes seconds to import).
    from bot.checkpoint_names import NoCheckpointError
    from bot.settings import SettingsError
    from llm.checkpoints import CheckpointError
    from llm.config import ConfigError
    from llm.generate import PromptTooLongError
    from llm.tokenizer import TokenizerAssetError

    return (
        UserError, SettingsError, NoCheckpointError, CheckpointError, ConfigError, PromptTooLongError,
        TokenizerAssetError, FileNotFoundError,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# generate


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint", description=cmd_generate.__doc__)
    p.add_argument("prompt", help="the instruction (or, with --raw, the whole prompt); '-' reads standard input")
    add_checkpoint_option(p, "default: what `scratchbot run` serves (SCRATCHBOT_CHECKPOINT, ...)")
    p.add_argument("--raw", action="store_true", help="send PROMPT as it is, without the Alpaca template")
    p.add_argument("--input", default="", help="the Input section of the Alpaca template")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: SCRATCHBOT_MAX_NEW_TOKENS (256)")
    p.add_argument("--temperature", type=float, default=None, help="0 is greedy; default: SCRATCHBOT_TEMPERATURE (0)")
    p.add_argument("--top-k", type=int, default=None, help="default: SCRATCHBOT_TOP_K (off)")
    p.add_argument("--top-p", type=float, default=None, help="default: SCRATCHBOT_TOP_P (off)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--no-truncate", action="store_true", help="refuse a prompt too long for the context")
    add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=cmd_generate)


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
    from bot.settings import load_settings

    settings = load_settings()
    overrides = {
        name: value
        for name in ("checkpoint", "device", "precision", "max_new_tokens", "temperature", "top_k", "top_p")
        if (value := getattr(args, name, None)) is not None
    }
    return settings.model_copy(update=overrides) if overrides else settings


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


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an answer. Without --raw, PROMPT is the instruction of a chapter-7 Alpaca prompt and only the
    response is printed. Text streams to the terminal as it is generated. Unset options come from the settings
    (SCRATCHBOT_*, as `scratchbot run` reads them)."""
    from llm.generate import SamplingParams, stream_text
    from llm.prompts import RESPONSE_STOPS, clean_response, render_prompt
    from llm.tokenizer import Tokenizer

    settings = settings_for(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = load_model(settings, args.n_heads)
    try:
        params = SamplingParams(
            max_new_tokens=answer_length(settings, args, model.config.context_length, raw=args.raw),
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=args.seed,
            stop=tuple(args.stop) + (() if args.raw else RESPONSE_STOPS),
            overflow="error" if args.no_truncate else "truncate",
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    tokenizer = Tokenizer()
    text = prompt if args.raw else render_prompt(prompt, args.input)
    stream = stream_text(model, tokenizer, tokenizer.encode(text), params)
    if args.json:
        for _ in stream:
            pass
    else:
        _print_stream(stream, strip=not args.raw)
    result = stream.result
    if result.truncated_tokens:
        print(f"note: the prompt was cut by {result.truncated_tokens} tokens to fit the context", file=sys.stderr)
    if args.json:
        out = {
            "text": result.text if args.raw else clean_response(result.text),
            "token_ids": result.token_ids,
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens,
            "seconds": round(result.seconds, 4),
            "tokens_per_second": round(result.tokens_per_second, 2),
            "finish_reason": result.finish_reason,
            "truncated_prompt_tokens": result.truncated_tokens,
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(
            f"[{result.new_tokens} tokens in {result.seconds:.2f} s, {result.tokens_per_second:.1f} tokens/s, "
            f"{result.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _print_stream(stream: Iterable[str], strip: bool) -> None:
    started = not strip
    for delta in stream:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def load_model(settings: Settings, n_heads: int | None) -> GPTModel:
    """The checkpoint the settings name (or `run` would serve), on their device, in their precision."""
    from bot.checkpoint_names import find_checkpoint
    from llm.checkpoints import load_checkpoint
    from llm.quantize import quantize_model

    path = find_checkpoint(settings.checkpoint, settings.checkpoints_dir)
    loaded = load_checkpoint(path, device=settings.device, n_heads=n_heads)
    return quantize_model(loaded.model, settings.precision)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


def _add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--format", required=True, choices=("book", "safetensors", "hf"))
    add_n_heads_option(p)
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", help="show a checkpoint's format, config, size and sha256")
    p.add_argument("path", type=Path)
    add_n_heads_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("init-model", help="write a randomly initialised model (for trying things and benchmarks)")
    p.add_argument("preset", help="gpt2-small, gpt2-medium, gpt2-large or gpt2-xl")
    p.add_argument("dst", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="safetensors", choices=("book", "safetensors", "hf"))
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=cmd_init_model)


def refuse_overwrite(dst: Path, fmt: str, force: bool) -> None:
    """A checkpoint is hours of training: never replace one unless told to."""
    from llm.checkpoints import written_paths

    existing = [path for path in written_paths(dst, fmt) if path.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists; give another destination, or --force to overwrite it")


def cmd_convert(args: argparse.Namespace) -> int:
    from llm.checkpoints import convert_checkpoint

    refuse_overwrite(args.dst, args.format, args.force)
    convert_checkpoint(args.src, args.dst, args.format, n_heads=args.n_heads)
    print(f"wrote {args.dst} ({args.format})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from llm.checkpoints import inspect_checkpoint

    info = inspect_checkpoint(args.path, n_heads=args.n_heads)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from llm.checkpoints import save_checkpoint
    from llm.config import GPTConfig
    from llm.model import GPTModel

    config = GPTConfig.from_name(args.preset)
    refuse_overwrite(args.dst, args.format, args.force)
    model = GPTModel(config).init_weights(args.seed)
    save_checkpoint(model, args.dst, format=args.format, metadata={"origin": f"random init, seed {args.seed}"})
    print(f"wrote {args.dst}: {args.preset}, {model.num_parameters:,} parameters, random weights (seed {args.seed})")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# database


def _add_db_commands(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="manage the database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = db_sub.add_parser(
        "upgrade", help="migrate the database to this version's schema", description=cmd_db_upgrade.__doc__
    )
    p.add_argument(
        "--database-url", default=None,
        help="default: SCRATCHBOT_DATABASE_URL, else the SQLite file SCRATCHBOT_DATA_DIR/scratchbot.db",
    )  # fmt: skip
    p.set_defaults(func=cmd_db_upgrade)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the database the bot uses (the settings' SCRATCHBOT_DATABASE_URL, else DATA_DIR/scratchbot.db) to
    the schema this version of scratchbot uses; the bot also does this at start-up. A database migrated by a newer
    scratchbot is refused and left untouched."""
    from storage.db import StorageError, normalize_url
    from storage.migrate import upgrade_database_at

    settings = settings_for(args)
    url = args.database_url or settings.resolved_database_url
    try:
        shown = normalize_url(url).render_as_string(hide_password=True)
        result = upgrade_database_at(url, settings.database_timeouts)
    except StorageError as e:
        raise UserError(str(e)) from None
    if result.changed:
        print(f"database {shown} upgraded from {result.from_revision or 'empty'} to {result.to_revision}")
    else:
        print(f"database {shown} already at {result.to_revision}, the newest schema")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the service


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the bot", description=cmd_run.__doc__)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot with the settings from the environment and .env (SCRATCHBOT_*; see .env.example). With no
    platform tokens set it opens a chat in this terminal."""
    import asyncio

    from bot.app import StartupError, run_service
    from storage.db import StorageError

    settings = settings_for(args)
    _configure_service_logging(settings, verbose=args.verbose)
    try:
        return asyncio.run(run_service(settings))
    except (StartupError, StorageError) as e:  # wrong URL, server down, a database from a newer version
        raise UserError(str(e)) from None


def _configure_service_logging(settings: Settings, *, verbose: bool) -> None:
    """Logs go to standard error, except in the terminal chat, where they would interleave with the answers:
    there they go to the settings' console log (data_dir/scratchbot.log)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else settings.log_level)
    if not settings.platforms:
        settings.console_log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.console_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)


# ---------------------------------------------------------------------------------------------------------------


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_generate,
    _add_checkpoint_commands,
    _add_db_commands,
    _add_run,
    add_download,
    add_evaluate,
    add_finetune,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchbot", description="A chatbot whose brain is a from-scratch GPT-2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to standard error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _user_errors()):
            print(f"scratchbot: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
