"""Scheduled jobs: retention deletes what is old (idempotently); the watch reloads new, finished checkpoints once."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.jobs import CheckpointWatcher, Jobs, apply_retention, build_jobs
from storage.records import ConversationKey
from storage.store import Store

KEY = ConversationKey("console", "local", "terminal")


async def test_retention_deletes_only_old_messages_and_is_idempotent(store: Store) -> None:
    now = datetime.now(UTC)
    await store.add_message(KEY, role="user", author_id="u", text="old", created_at=now - timedelta(days=40))
    await store.add_message(KEY, role="user", author_id="u", text="recent", created_at=now - timedelta(days=1))
    first = await apply_retention(store, 30, now=now)
    assert first is not None and first.messages == 1
    assert [m.text for m in await store.recent_history(KEY)] == ["recent"]
    again = await apply_retention(store, 30, now=now)
    assert again is not None and again.messages == 0
    assert await apply_retention(store, 0, now=now) is None  # 0 days keeps everything


async def test_watch_reloads_a_new_checkpoint_once_it_stopped_changing(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    current = directory / "current.safetensors"
    current.write_bytes(b"a")
    reloaded: list[str] = []

    async def reload(path: Path) -> bool:
        reloaded.append(path.name)
        return True

    watcher = CheckpointWatcher(directory, reload, current)
    assert not await watcher.check()  # nothing new
    new = directory / "new.safetensors"
    new.write_bytes(b"bb")
    os.utime(new, (current.stat().st_mtime + 10,) * 2)
    assert not await watcher.check()  # seen once: maybe still being copied
    assert await watcher.check()  # unchanged since: reload
    assert not await watcher.check()  # and only once
    assert reloaded == ["new.safetensors"]


async def test_watch_does_not_retry_a_refused_file_until_it_changes(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    attempts: list[str] = []

    async def refuse(path: Path) -> bool:
        attempts.append(path.name)
        return False

    watcher = CheckpointWatcher(directory, refuse, None)
    bad = directory / "bad.pth"
    bad.write_bytes(b"corrupt")
    for _ in range(4):
        await watcher.check()
    assert attempts == ["bad.pth"]
    bad.write_bytes(b"corrupt, but different now")
    os.utime(bad, (bad.stat().st_mtime + 5,) * 2)
    for _ in range(2):
        await watcher.check()
    assert attempts == ["bad.pth", "bad.pth"]
    (directory / "bad.json").write_text('{"n_heads": 4}')  # the config it was refused for lacking
    for _ in range(2):
        await watcher.check()
    assert attempts == ["bad.pth", "bad.pth", "bad.pth"]


async def test_scheduler_runs_retention_at_start_and_never_overlaps_a_job(store: Store, tmp_path: Path) -> None:
    old = datetime.now(UTC) - timedelta(days=100)
    await store.add_message(KEY, role="user", author_id="u", text="ancient", created_at=old)
    jobs = build_jobs(store, retention_days=30, watcher=None, watch_interval_s=30)
    assert {job.id for job in jobs.scheduler.get_jobs()} == {"retention"}
    jobs.start()
    try:
        retention = jobs.scheduler.get_job("retention")
        assert retention.max_instances == 1 and retention.coalesce
        for _ in range(50):
            if not await store.recent_history(KEY):
                break
            await asyncio.sleep(0.05)
        assert await store.recent_history(KEY) == []
    finally:
        await jobs.stop(grace_s=5)


async def test_stopping_lets_a_run_in_flight_finish_within_the_grace_period() -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def job() -> None:
        started.set()
        await release.wait()
        finished.set()

    jobs = Jobs()
    jobs.add("slow", job, "interval", hours=1, next_run_time=datetime.now(UTC))
    jobs.start()
    await asyncio.wait_for(started.wait(), 10)
    asyncio.get_running_loop().call_later(0.05, release.set)
    await asyncio.wait_for(jobs.stop(grace_s=10), 10)
    assert finished.is_set() and not jobs.scheduler.running


async def test_stopping_cancels_a_run_past_the_grace_period_and_returns_only_once_it_has_unwound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run left unwinding after stop() would touch the store after the service closed it."""
    started, unwound = asyncio.Event(), asyncio.Event()

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits, like a rollback
            unwound.set()

    jobs = Jobs()
    jobs.add("stuck", stuck, "interval", hours=1, next_run_time=datetime.now(UTC))
    jobs.start()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(jobs.stop(grace_s=0.05), 10)
    assert unwound.is_set()
    assert "job stuck was cut short by shutdown" in caplog.text
    # A planned stop is not a failed job: nothing at ERROR (APScheduler logs a job that raises with a traceback).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("turns", range(4))
async def test_stopping_in_any_loop_turn_after_a_run_was_submitted_leaves_no_run_behind(turns: int) -> None:
    """The executor creates a run's task one loop turn before the run takes its first step: a stop in between must
    still wait for (or cut short) that run, or it would touch the store after the service closed it."""

    async def stuck() -> None:
        await asyncio.Event().wait()

    jobs = Jobs()
    jobs.add("stuck", stuck, "interval", hours=1, next_run_time=datetime.now(UTC))
    jobs.start()
    for _ in range(turns):
        await asyncio.sleep(0)
    await jobs.stop(grace_s=0.05)  # awaited directly: wait_for's extra loop turn could hide a run left behind
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not jobs.scheduler.running


async def test_a_failing_job_is_logged_and_runs_again_next_time(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def failing() -> None:
        runs.append(1)
        raise RuntimeError("disk full")

    jobs = Jobs()
    jobs.add("flaky", failing, "interval", seconds=0.05, next_run_time=datetime.now(UTC))
    jobs.start()
    try:
        for _ in range(100):
            if len(runs) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await jobs.stop(grace_s=5)
    assert len(runs) >= 2
    assert "job flaky failed; it runs again at its next time" in caplog.text and "disk full" in caplog.text
