"""Scheduled jobs on APScheduler's asyncio scheduler: history retention and the checkpoint-directory watch.

Each job is a plain async function (tested without a scheduler); the scheduler only times them. No job overlaps
itself (max_instances=1) and missed runs collapse into one (coalesce), so a slow reload is never started twice.
A job's failure is logged and the next run tries again: jobs are an error boundary like messages. Stopping
waits for the runs in flight (see ``Jobs``), so nothing runs against a closed store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.core.checkpoint_names import list_checkpoints
from bot.draining import drain
from llm.checkpoints.book import book_config_path
from storage.records import RetentionResult
from storage.store import Store

log = logging.getLogger(__name__)
# At shutdown a job in flight gets at most this long to finish (a retention delete takes well under it); the rest of
# the shutdown grace period belongs to answers in progress.
STOP_GRACE_S = 5.0


async def apply_retention(store: Store, days: int, *, now: datetime | None = None) -> RetentionResult | None:
    """Delete stored messages older than ``days`` (0 keeps everything)."""
    if days <= 0:
        return None
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    result = await store.delete_older_than(cutoff)
    log.info(
        "retention: deleted %d messages, %d conversations older than %s",
        result.messages,
        result.conversations,
        cutoff.isoformat(),
    )
    return result


class CheckpointWatcher:
    """Reloads when a new checkpoint appears in the directory (newest by modification time).

    A file is only tried once it has stopped changing between two looks (a copy in progress is not a checkpoint),
    and a file that failed its checks is not retried until it changes again.
    """

    def __init__(self, directory: Path, reload: Callable[[Path], Awaitable[bool]], current: Path | None) -> None:
        self._directory = directory
        self._reload = reload
        self._seen = _signature(current) if current is not None and current.exists() else None
        self._candidate: tuple[str, float, int] | None = None

    async def check(self) -> bool:
        """One look at the directory; True when a reload happened."""
        newest = await asyncio.to_thread(list_checkpoints, self._directory)
        if not newest:
            return False
        signature = await asyncio.to_thread(_signature, newest[0])
        if signature == self._seen:
            return False
        if signature != self._candidate:
            self._candidate = signature  # seen once; wait one more interval to be sure the copy is finished
            return False
        self._seen = signature
        log.info("checkpoint watch: %s is new, reloading", newest[0].name)
        return await self._reload(newest[0])


def _signature(path: Path) -> tuple[str, float, int]:
    """What changes when a checkpoint does: its files' times and sizes, the config beside a book `.pth` included
    (adding the missing one makes a refused file worth trying again)."""
    files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path, book_config_path(path)]
    stats = [f.stat() for f in files if f.exists()]
    return path.name, max((s.st_mtime for s in stats), default=0.0), sum(s.st_size for s in stats)


class Jobs:
    """The scheduler plus the job runs it has in flight.

    APScheduler's asyncio executor cancels a running job on shutdown but cannot await it, so the run would unwind
    after the caller had closed the store, on a disposed engine, and could hang the process on its way out (CI saw
    exactly that). ``stop`` therefore lets runs in flight finish within a grace period, then cancels and awaits the
    rest; when it returns, no job touches the store or the generator again.
    """

    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={"max_instances": 1, "coalesce": True})
        self._running: set[asyncio.Task[object]] = set()

    def add(self, name: str, job: Callable[[], Awaitable[object]], trigger: str, **trigger_args: object) -> None:
        self.scheduler.add_job(self._boundary(name, job), trigger, id=name, **trigger_args)

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if not self.scheduler.running:
            return
        self.scheduler.pause()  # no new runs while the ones in flight finish
        # A run the executor submitted this loop turn has not taken its first step, so it is not in `_running` yet.
        await asyncio.sleep(0)
        await drain(self._running, grace_s)
        self.scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler's shutdown takes effect on the loop's next turn

    def _boundary(self, name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        """A job's failure is logged and the next run tries again: jobs are an error boundary like messages."""

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None  # the executor runs each job as its own task
            self._running.add(task)
            try:
                await job()
            except asyncio.CancelledError:
                # Only `stop` cancels a run, and it awaits the task. Not re-raising keeps APScheduler from logging
                # a run cut short by shutdown as a failed job, with a traceback, at ERROR.
                log.warning("job %s was cut short by shutdown; it runs again at the next start", name)
            except Exception:
                log.exception("job %s failed; it runs again at its next time", name)
            finally:
                self._running.discard(task)

        return run


def build_jobs(
    store: Store, *, retention_days: int, watcher: CheckpointWatcher | None, watch_interval_s: float
) -> Jobs:
    jobs = Jobs()
    if retention_days > 0:
        jobs.add(
            "retention", lambda: apply_retention(store, retention_days), "interval",
            hours=6, next_run_time=datetime.now(UTC),
        )  # fmt: skip
    if watcher is not None:
        jobs.add("checkpoint-watch", watcher.check, "interval", seconds=watch_interval_s)
    return jobs
