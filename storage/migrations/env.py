"""Alembic environment for scratchbot (the async template, adapted).

`storage.migrate` runs every migration: it hands over a connection that is already inside a transaction (so a whole
upgrade commits or rolls back as one, on SQLite too) with SQLite's foreign keys switched off (batch mode rebuilds
tables, and dropping a referenced table with foreign keys on would cascade-delete the rows that point at it).

Without a handed-over connection, the URL in the `sqlalchemy.url` option is used; that path is for writing new
revisions, see `storage.migrate`.
"""

from __future__ import annotations

import asyncio
import logging

from alembic import context
from sqlalchemy.engine import Connection

from storage.db import create_engine
from storage.models import Base

log = logging.getLogger(__name__)

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite's ALTER TABLE cannot change or drop most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("scratchbot migrations run online only: use `scratchbot db upgrade --database-url URL`")

handed_over = config.attributes.get("connection")
if handed_over is not None:
    run_migrations(handed_over)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database to migrate: build the Alembic config with storage.migrate.alembic_config(url)")
    asyncio.run(run_with_own_engine(url))
