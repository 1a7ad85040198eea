"""``scratchbot run``: the bot, with the settings from the environment and .env."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from bot.cli.common import UserError, settings_for

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the bot", description=cmd_run.__doc__)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot with the settings from the environment and .env (SCRATCHBOT_*; see .env.example). With no
    platform tokens set it opens a chat in this terminal."""
    import asyncio

    from bot.app import StartupError, run_service
    from storage.db import StorageError

    settings = settings_for(args)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        _configure_service_logging(settings, verbose=args.verbose)
    except OSError as e:
        raise UserError(
            f"cannot use the data directory {settings.data_dir}: {e.strerror or e}. Set SCRATCHBOT_DATA_DIR to a "
            "directory this user can write to"
        ) from None
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
