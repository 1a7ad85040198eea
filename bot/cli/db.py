"""``scratchbot db upgrade``: migrate the database the bot uses."""

from __future__ import annotations

import argparse
import logging

from bot.cli.common import UserError, settings_for

log = logging.getLogger(__name__)


def add_db_commands(sub: argparse._SubParsersAction) -> None:
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
    from storage.db import StorageError, describe_database, normalize_url
    from storage.migrate import upgrade_database_at

    settings = settings_for(args)
    url = args.database_url or settings.resolved_database_url
    try:
        shown = describe_database(normalize_url(url))
        result = upgrade_database_at(url, settings.database_timeouts)
    except StorageError as e:
        raise UserError(str(e)) from None
    if result.changed:
        print(f"database {shown} upgraded from {result.from_revision or 'empty'} to {result.to_revision}")
    else:
        print(f"database {shown} already at {result.to_revision}, the newest schema")
    return 0
