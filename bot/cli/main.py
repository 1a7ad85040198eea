"""`scratchbot` command line: parse arguments, hand them to one command module, turn user errors into one clear line.

Each command lives in its own module (generate, checkpoints, db, run, models, finetune); what they share is in
`bot.cli.common`. Only this module imports them all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bot.cli.audit import add_audit
from bot.cli.checkpoints import add_checkpoint_commands
from bot.cli.common import UserError
from bot.cli.db import add_db_commands
from bot.cli.finetune import add_finetune
from bot.cli.generate import add_generate
from bot.cli.models import add_download, add_evaluate
from bot.cli.run import add_run

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_generate,
    add_checkpoint_commands,
    add_db_commands,
    add_audit,
    add_run,
    add_download,
    add_evaluate,
    add_finetune,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported lazily so `scratchbot --help` stays fast (torch takes seconds to import).
    from bot.core.checkpoint_names import NoCheckpointError
    from bot.settings import SettingsError
    from llm.checkpoints.common import CheckpointError
    from llm.config import ConfigError
    from llm.decoding.sampling import PromptTooLongError
    from llm.tokenizer import TokenizerAssetError

    return (
        UserError, SettingsError, NoCheckpointError, CheckpointError, ConfigError, PromptTooLongError,
        TokenizerAssetError, FileNotFoundError,
    )  # fmt: skip


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
