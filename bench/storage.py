"""Storage benchmark: how fast the Store takes messages, and how long a prompt's history read takes.

Inserts --messages turns across --conversations conversations through `Store.add_message` (one transaction per turn,
as the bot does, from --writers concurrent tasks), then times `Store.recent_history` for random conversations. The
named peer is the same history query sent straight through the driver (sqlite3 / asyncpg) with no ORM or session: the
ratio is what the Store's layer costs. The read must stay well under one token step of the model (a few ms).

    python bench/storage.py                                   # SQLite, plus PostgreSQL if the env var is set
    python bench/storage.py --postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test --time-limit 120

PostgreSQL runs in a schema of its own, dropped at the end. Inserting stops at --time-limit seconds per backend, and
the reads then run on what was inserted (the output says so).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import astuple, dataclass
from pathlib import Path

# Run as `python bench/storage.py`, this file's directory heads sys.path and `import storage` would find this very
# file; put the repository root there instead.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import aiosqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine, normalize_url, sqlite_url
from storage.migrate import upgrade_database
from storage.records import ConversationKey
from storage.store import Store

log = logging.getLogger(__name__)

POSTGRES_URL_VAR = "SCRATCHBOT_TEST_POSTGRES_URL"

# The history query as the Store issues it, written by hand for the driver-level peer.
HISTORY_SQL = (
    "SELECT m.id, m.role, m.author_id, m.text, m.created_at FROM messages m JOIN conversations c "
    "ON m.conversation_id = c.id WHERE c.platform = {p} AND c.tenant = {p} AND c.channel = {p} AND c.thread = {p} "
    "ORDER BY m.id DESC LIMIT {p}"
)


@dataclass(frozen=True)
class Result:
    backend: str
    inserted: int
    insert_seconds: float
    store_ms: list[float]
    peer_ms: list[float]


def key_of(conversation: int) -> ConversationKey:
    return ConversationKey("discord", f"guild-{conversation % 50}", f"channel-{conversation}")


async def insert(store: Store, args: argparse.Namespace) -> tuple[int, float]:
    """Round-robin over conversations, so every conversation grows as it would in real use."""
    deadline = time.perf_counter() + args.time_limit
    text = "A user's message of ordinary length, with some Unicode (ünïcødé, 🙂) to be realistic. " * 2
    next_index = iter(range(args.messages))
    inserted = 0

    async def writer() -> None:
        nonlocal inserted
        for i in next_index:
            if time.perf_counter() > deadline:
                return
            role = "user" if i % 2 == 0 else "assistant"
            await store.add_message(
                key_of(i % args.conversations),
                role=role,
                author_id=f"user-{i % 997}",
                text=text,
                platform_message_id=f"m-{i}",
            )
            inserted += 1

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(args.writers)))
    return inserted, time.perf_counter() - start


async def time_reads(read: Callable[[ConversationKey], Awaitable[int]], args: argparse.Namespace) -> list[float]:
    rng = random.Random(0)
    for conversation in range(20):  # warm up caches and prepared statements
        await read(key_of(conversation))
    timings = []
    for _ in range(args.reads):
        key = key_of(rng.randrange(args.conversations))
        start = time.perf_counter()
        rows = await read(key)
        timings.append((time.perf_counter() - start) * 1000)
        assert rows > 0 or args.messages < args.conversations, f"no history for {key}"
    return timings


async def run_backend(
    backend: str, engine: AsyncEngine, peer: Callable[[ConversationKey], Awaitable[int]], args: argparse.Namespace
) -> Result:
    await upgrade_database(engine)
    store = Store(engine)
    inserted, seconds = await insert(store, args)

    async def store_read(key: ConversationKey) -> int:
        return len(await store.recent_history(key, args.history))

    return Result(backend, inserted, seconds, await time_reads(store_read, args), await time_reads(peer, args))


async def bench_sqlite(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="scratchbot-bench-") as directory:
        path = Path(directory) / "bench.db"
        engine = create_engine(sqlite_url(path))
        peer_connection = await aiosqlite.connect(path)
        sql = HISTORY_SQL.format(p="?")

        async def peer(key: ConversationKey) -> int:
            return len(await peer_connection.execute_fetchall(sql, (*astuple(key), args.history)))

        try:
            return await run_backend("SQLite", engine, peer, args)
        finally:
            await peer_connection.close()
            await engine.dispose()


async def bench_postgres(url: str, args: argparse.Namespace) -> Result:
    import asyncpg

    schema = f"scratchbot_bench_{uuid.uuid4().hex[:12]}"
    parsed = normalize_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    engine = create_engine(parsed, connect_args={"server_settings": {"search_path": schema}})
    peer_connection = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    sql = HISTORY_SQL.format(p="{}").format(*(f"${n}" for n in range(1, 6)))

    async def peer(key: ConversationKey) -> int:
        return len(await peer_connection.fetch(sql, *astuple(key), args.history))

    try:
        return await run_backend("PostgreSQL", engine, peer, args)
    finally:
        await peer_connection.close()
        await engine.dispose()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(result: Result, args: argparse.Namespace) -> None:
    store50, store95 = percentile(result.store_ms, 50), percentile(result.store_ms, 95)
    peer50 = percentile(result.peer_ms, 50)
    note = "" if result.inserted == args.messages else f"  (stopped at the {args.time_limit:.0f} s limit)"
    print(f"{result.backend}")
    print(
        f"  insert: {result.inserted:,} messages in {result.insert_seconds:.1f} s = "
        f"{result.inserted / result.insert_seconds:,.0f} inserts/s ({args.writers} writers, one transaction each)"
        f"{note}"
    )
    print(
        f"  recent_history({args.history}) over {args.reads:,} random conversations: p50 {store50:.2f} ms, "
        f"p95 {store95:.2f} ms, p99 {percentile(result.store_ms, 99):.2f} ms"
    )
    print(f"  peer (same query, bare driver): p50 {peer50:.2f} ms -> Store costs {store50 / peer50:.1f}x the peer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--writers", type=int, default=8, help="concurrent inserting tasks")
    parser.add_argument("--reads", type=int, default=2_000, help="history reads to time")
    parser.add_argument("--history", type=int, default=20, help="turns per history read")
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds of inserting per backend, at most")
    parser.add_argument(
        "--postgres-url", default=os.environ.get(POSTGRES_URL_VAR), help=f"default: ${POSTGRES_URL_VAR}"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    print(f"{args.messages:,} messages across {args.conversations:,} conversations", flush=True)
    if not args.skip_sqlite:
        report(asyncio.run(bench_sqlite(args)), args)
    if args.postgres_url:
        report(asyncio.run(bench_postgres(args.postgres_url, args)), args)
    else:
        print(f"PostgreSQL skipped: pass --postgres-url or set {POSTGRES_URL_VAR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
