"""Soak benchmark: mixed traffic through the real service core on SQLite for --minutes, watching for leaks.

The stack is built in-process the way `bot.app.run_service` builds it: `open_store` on a throwaway SQLite file,
`LocalGenerator` over the bundled demo checkpoint (the service's int8, max batch 8 and queue), the real
`ConversationManager` with its `AdminPolicy` and `RateLimiter` (the service's limit per user, over 150 synthetic
users on each platform), and retention as a job on the service's scheduler (`bot.jobs.Jobs`). --concurrency
workers send mixed traffic (see bench/soak_traffic.py): chat in channels, threads and DMs, summarize (from a
synthetic platform transcript or from what is stored), translate, model, settings, forget, single and bulk message
deletions, deleted threads and channels, removed tenants. An admin reloads the model every --reload-every-s,
alternating between two copies of the checkpoint. Answers are short (--max-new-tokens) so the soak exercises many
requests. Replies are read to their end in memory, as an adapter would; no platform SDK is involved.

Every --sample-s the process is measured: RSS (VmRSS), open file descriptors, threads, asyncio tasks, live Python
objects, the database file with its WAL, requests done, errors logged. The first --warmup-minutes are excluded from
growth. Targets (issue 13): RSS growth < 5 % from the end of the warm-up to the end; once the traffic has drained,
open files back to their warm-up level and no asyncio task left over; no error logged; every kind of traffic ran.
The exit status is 1 if a target is missed.

The database: retention deletes messages older than --retention-s (default: half the warm-up), deletions take more,
so messages, conversations and processed events reach a steady state. The audit log and the checkpoint loads are
kept by design (admins' actions stay accountable): they grow with every reload, settings change and purge. SQLite
reuses freed pages but never shrinks its file, so the file follows the high-water mark of the live rows.

    python bench/soak.py                                   # 30 minutes, 5 of them warm-up
    python bench/soak.py --minutes 5 --warmup-minutes 1 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Run as `python bench/soak.py`, this file's directory heads sys.path; put the repository root there instead.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from bench.soak_report import (
    SAMPLE_HEADER,
    LogCount,
    Sample,
    SoakReport,
    database_mb,
    format_report,
    live_objects,
    read_json,
    rss_mb,
    sample_line,
    table_rows,
    write_json,
)
from bench.soak_traffic import ADMIN, PLATFORMS, WEIGHTS, Population, Traffic
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import ConversationManager, ManagerConfig
from bot.core.ratelimit import RateLimiter
from bot.draining import drain
from bot.inference.local import LocalGenerator
from bot.jobs import Jobs
from bot.settings import Settings
from llm.assets import DEMO_CHECKPOINT
from llm.checkpoints.load import load_checkpoint
from llm.decoding.quantize import MODES
from llm.prompts import answer_length_problem
from llm.tokenizer import Tokenizer
from storage.db import sqlite_url
from storage.store import Store, open_store

log = logging.getLogger(__name__)

KINDS = (*WEIGHTS, "reload", "retention")


def service_default(name: str) -> Any:
    """What the service runs with when nothing is configured: the soak serves as `scratchbot run` does."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0  # of traffic
    warmup_minutes: float | None = None  # excluded from growth; None: 5 minutes, or a sixth of a shorter run
    sample_s: float = 10.0  # between two measurements
    concurrency: int = 12  # requests in flight at once, at most
    checkpoint: Path = DEMO_CHECKPOINT  # a checkpoint file, served under two names and reloaded between them
    precision: str = service_default("precision")  # as the service: int8
    max_batch: int = service_default("max_batch")  # as the service: 8 rows decoded together
    max_new_tokens: int = 24  # short answers: many requests per minute
    reload_every_s: float = 60.0  # an admin reload this often
    retention_s: float | None = None  # messages older than this are deleted; None: half the warm-up
    seed: int = 0  # of the traffic's choices
    grace_s: float = service_default("request_timeout_s") + 30.0  # for what runs at the deadline to finish

    @property
    def warmup_s(self) -> float:
        minutes = self.warmup_minutes if self.warmup_minutes is not None else min(5.0, self.minutes / 6)
        return minutes * 60

    @property
    def kept_s(self) -> float:
        # Half the warm-up: the stored messages reach their steady state before the warm-up ends.
        return self.retention_s if self.retention_s is not None else max(self.warmup_s / 2, 1.0)


class Soak:
    """One run: the traffic workers, the timed admin reloads, the sampler; then the drain and the report."""

    def __init__(
        self, config: SoakConfig, manager: ConversationManager, database: Path, names: list[str], log_count: LogCount
    ) -> None:
        self.config = config
        self._database = database
        self._names = names
        self._rng = random.Random(config.seed)
        self.traffic = Traffic(manager, Population(self._rng), self._rng)
        self.done: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.rows_warmup: dict[str, int] = {}
        self.log_count = log_count
        self._tour = deque(WEIGHTS)  # each kind once first, so that even a short run covers them all
        self._started = time.monotonic()
        self._deadline = self._started + config.minutes * 60

    def measure(self) -> Sample:
        objects = live_objects()  # first: the collection takes a while, and the figures below are of one moment
        return Sample(
            t_s=round(time.monotonic() - self._started, 1),
            rss_mb=round(rss_mb(), 1),
            fds=len(os.listdir("/proc/self/fd")),
            threads=threading.active_count(),
            tasks=len(asyncio.all_tasks()),
            py_objects=objects,
            db_mb=round(database_mb(self._database), 2),
            done=sum(self.done.values()),
            errors=self.log_count.errors,
        )

    async def run(self, echo: bool) -> Sample:
        """The traffic until the deadline, then the drain; returns the sample taken before it began."""
        before = self.measure()
        self._started = time.monotonic()
        self._deadline = self._started + self.config.minutes * 60
        tasks = [asyncio.create_task(self._worker(), name=f"soak-worker-{n}") for n in range(self.config.concurrency)]
        tasks.append(asyncio.create_task(self._reloads(), name="soak-reloads"))
        tasks.append(asyncio.create_task(self._sampler(echo), name="soak-sampler"))
        await asyncio.wait(tasks, timeout=max(0.0, self._deadline - time.monotonic()))
        # At the deadline the workers take nothing new; what is running finishes (each request is bounded by the
        # request timeout). Past the grace period it is cut short, which the soak reports as an error: nothing hangs.
        late = await drain(tasks, self.config.grace_s)
        if late:
            log.error("soak: %d tasks still busy %g s after the deadline were cancelled", late, self.config.grace_s)
        return before

    def next_kind(self) -> str:
        return self._tour.popleft() if self._tour else self._rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]

    async def _worker(self) -> None:
        while time.monotonic() < self._deadline:
            kind = self.next_kind()
            try:
                await self.traffic.run(kind)
            except Exception:  # the boundary of one request or event, as an adapter has
                log.exception("soak: %s failed", kind)
            self.done[kind] += 1

    async def _reloads(self) -> None:
        turn = 0
        while True:
            # The first comes by half the run at the latest: a short run covers reloads too.
            left = self._deadline - time.monotonic()
            wait = self.config.reload_every_s if turn else min(self.config.reload_every_s, left / 2)
            if wait >= left:
                return
            await asyncio.sleep(wait)
            turn += 1
            name = self._names[turn % len(self._names)]
            answer = await self.traffic.reload(name)
            if not answer.startswith("Now serving"):
                log.error("soak: reload to %s answered %r", name, answer)
            self.done["reload"] += 1

    async def retention(self, store: Store) -> None:
        """The retention job with a cutoff of seconds instead of days, so it bites within the run."""
        await store.delete_older_than(datetime.now(UTC) - timedelta(seconds=self.config.kept_s))
        self.done["retention"] += 1

    async def _sampler(self, echo: bool) -> None:
        if echo:
            print(SAMPLE_HEADER)
        while True:
            sample = self.measure()
            self.samples.append(sample)
            if not self.rows_warmup and sample.t_s >= self.config.warmup_s:
                self.rows_warmup = await asyncio.to_thread(table_rows, self._database)
            if echo:
                print(sample_line(sample), flush=True)
            if sample.t_s >= self.config.minutes * 60:
                return  # the last sample is the one at the deadline
            await asyncio.sleep(max(0.0, min(self.config.sample_s, self._deadline - time.monotonic())))


async def soak(config: SoakConfig, *, echo: bool = False) -> SoakReport:
    """Build the service stack as `run_service` does, run the soak, close everything; return the report."""
    log_count = LogCount()
    logging.getLogger().addHandler(log_count)
    try:
        with tempfile.TemporaryDirectory(prefix="scratchbot-soak-") as directory:
            checkpoints = Path(directory) / "checkpoints"
            checkpoints.mkdir()
            names = [f"soak-{letter}{config.checkpoint.suffix}" for letter in "ab"]
            for name in names:
                shutil.copyfile(config.checkpoint, checkpoints / name)
            return await _run(config, Path(directory) / "soak.db", checkpoints, names, log_count, echo)
    finally:
        logging.getLogger().removeHandler(log_count)


async def _run(
    config: SoakConfig, database: Path, checkpoints: Path, names: list[str], log_count: LogCount, echo: bool
) -> SoakReport:
    tokenizer = Tokenizer()
    loaded = await asyncio.to_thread(load_checkpoint, checkpoints / names[0], "cpu")
    if problem := answer_length_problem(config.max_new_tokens, loaded.config.context_length, tokenizer):
        raise ValueError(f"--max-new-tokens {config.max_new_tokens} cannot be served by {names[0]}: {problem}")
    generator = LocalGenerator(
        loaded,
        tokenizer,
        name=names[0],
        precision=config.precision,
        max_batch=config.max_batch,
        queue_size=service_default("queue_size"),
    )
    defaults = ChannelConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=service_default("temperature"),
        top_k=service_default("top_k"),
        top_p=service_default("top_p"),
        history_messages=service_default("history_messages"),
    )
    async with open_store(sqlite_url(database)) as store:
        await generator.start()
        try:
            manager = ConversationManager(
                store,
                generator,
                tokenizer,
                AdminPolicy({platform: [ADMIN] for platform in PLATFORMS}),
                RateLimiter(service_default("rate_limit_per_minute")),
                checkpoints,
                ManagerConfig(
                    defaults=defaults,
                    request_timeout_s=service_default("request_timeout_s"),
                    summarize_default=service_default("summarize_default"),
                ),
            )
            run = Soak(config, manager, database, names, log_count)
            jobs = Jobs()
            every = max(1.0, config.kept_s / 4)
            jobs.add("retention", lambda: run.retention(store), "interval", seconds=every,
                     next_run_time=datetime.now(UTC))  # fmt: skip
            jobs.start()
            if echo:
                print(describe(config, loaded.config.context_length, every, database), flush=True)
            try:
                before = await run.run(echo)
            finally:
                await jobs.stop()
            drained = run.measure()
            rows_end = await asyncio.to_thread(table_rows, database)
        finally:
            await generator.close(service_default("shutdown_grace_s"))
    return report(run, before, drained, rows_end)


def describe(config: SoakConfig, context_length: int, retention_every_s: float, database: Path) -> str:
    return (
        f"soak: {config.minutes:g} min of traffic ({config.warmup_s / 60:g} min warm-up), {config.checkpoint.name} "
        f"(context {context_length}) {config.precision}, max batch {config.max_batch}, {config.concurrency} "
        f"concurrent, answers of at most {config.max_new_tokens} tokens, reload every {config.reload_every_s:g} s, "
        f"retention keeps {config.kept_s:g} s (run every {retention_every_s:g} s), SQLite {database}, "
        f"pid {os.getpid()}, {torch.get_num_threads()} torch threads"
    )


def report(run: Soak, before: Sample, drained: Sample, rows_end: dict[str, int]) -> SoakReport:
    return SoakReport(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(run.config).items()},
        warmup_s=run.config.warmup_s,
        samples=run.samples,
        before=before,
        drained=drained,
        done={kind: run.done[kind] for kind in KINDS},
        refused=dict(run.traffic.refused),
        warnings=run.log_count.warnings,
        errors=run.log_count.errors,
        error_examples=list(run.log_count.examples),
        rows_warmup=run.rows_warmup,
        rows_end=rows_end,
    )


def run_soak(*, echo: bool = False, **config: Any) -> SoakReport:
    """The soak as a function: ``run_soak(minutes=0.05, warmup_minutes=0.01, sample_s=0.5)``."""
    return asyncio.run(soak(SoakConfig(**config), echo=echo))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="of traffic")
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 5, or a sixth of a shorter run")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between measurements")
    parser.add_argument("--concurrency", type=int, default=12, help="requests in flight at once")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="a checkpoint file (default: demo)")
    parser.add_argument("--precision", choices=MODES, default=service_default("precision"))
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length")
    parser.add_argument("--reload-every-s", type=float, default=60.0, help="seconds between admin reloads")
    parser.add_argument("--retention-s", type=float, default=None, help="messages kept (default: half the warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the samples and the summary here")
    parser.add_argument("--report", type=Path, default=None, help="run nothing: judge a run written with --json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.report is not None:
        recorded = read_json(args.report)
        print(format_report(recorded))
        return 0 if recorded.passed else 1
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file")
    options = {k: v for k, v in vars(args).items() if k not in ("json", "report")}
    result = run_soak(echo=True, **options)
    print()
    print(format_report(result))
    if args.json is not None:
        write_json(result, args.json)
        print(f"samples and summary written to {args.json}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
