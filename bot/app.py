"""The composition root: Settings -> Store -> Generator -> ConversationManager -> adapters -> scheduler.

Everything is built and wired here, and every resource is owned by one ``async with`` so a stop (Ctrl-D, SIGINT,
SIGTERM) stops intake, lets running generations finish within the grace period, and closes the database last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO

from bot.adapters.console import ConsoleAdapter
from bot.auth import AdminPolicy
from bot.channel_settings import ChannelConfig
from bot.checkpoint_names import list_checkpoints
from bot.conversation import ConversationManager, ManagerConfig
from bot.inference import LocalGenerator, ReloadFailed
from bot.jobs import CheckpointWatcher, build_scheduler
from bot.ratelimit import RateLimiter
from bot.settings import Settings
from llm.checkpoints import load_checkpoint
from llm.tokenizer import Tokenizer
from storage.store import open_store

log = logging.getLogger(__name__)

GET_A_CHECKPOINT = (
    "no checkpoint to serve. Set SCRATCHBOT_CHECKPOINT to a checkpoint file (the book's gpt2-medium355M-sft.pth, a "
    "safetensors file or a Hugging Face GPT-2 directory), or put one in {dir}. To make one: `scratchbot download "
    "gpt2-medium --dir data/gpt2` then `scratchbot finetune`, or `scratchbot init-model gpt2-small "
    "{dir}/random.safetensors` for a random-weight model that only shows the plumbing."
)


class NoCheckpointError(RuntimeError):
    """Nothing to serve; the message says how to get a checkpoint."""


def find_checkpoint(settings: Settings, bundled: Path | None = None) -> Path:
    """The configured checkpoint, else the newest in the checkpoints directory, else the bundled demo."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    available = list_checkpoints(settings.checkpoints_dir)
    if available:
        return available[0]
    if bundled is not None and bundled.exists():
        log.warning("serving the bundled demo checkpoint %s: it is small and weak; see the README", bundled.name)
        return bundled
    raise NoCheckpointError(GET_A_CHECKPOINT.format(dir=settings.checkpoints_dir))


def bundled_checkpoint() -> Path | None:
    """The demo checkpoint shipped inside the package, when this version has one."""
    try:
        from llm.assets import DEMO_CHECKPOINT
    except ImportError:
        return None
    return Path(DEMO_CHECKPOINT)


async def run_service(settings: Settings, *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    if settings.platforms:
        raise NoCheckpointError(
            f"platform tokens are set ({', '.join(settings.platforms)}) but this version has no platform adapters "
            "yet; unset them to chat in the terminal"
        )
    path = find_checkpoint(settings, bundled_checkpoint())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer()
    loaded = await asyncio.to_thread(load_checkpoint, path, settings.device)
    generator = LocalGenerator(
        loaded,
        tokenizer,
        name=path.name,
        precision=settings.precision,
        max_batch=settings.max_batch,
        queue_size=settings.queue_size,
    )
    async with open_store(settings.resolved_database_url) as store:
        await generator.start()
        manager = ConversationManager(
            store,
            generator,
            tokenizer,
            AdminPolicy({"discord": settings.discord_admin_ids, "slack": settings.slack_admin_ids}),
            RateLimiter(settings.rate_limit_per_minute),
            settings.checkpoints_dir,
            ManagerConfig(
                defaults=ChannelConfig(
                    max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_k=settings.top_k,
                    top_p=settings.top_p,
                    history_messages=settings.history_messages,
                ),
                request_timeout_s=settings.request_timeout_s,
                summarize_default=settings.summarize_default,
            ),
        )
        watcher = None
        if settings.watch_checkpoints:
            watcher = CheckpointWatcher(settings.checkpoints_dir, _watch_reload(manager), path)
        scheduler = build_scheduler(
            store, retention_days=settings.retention_days, watcher=watcher, watch_interval_s=settings.watch_interval_s
        )
        scheduler.start()
        console = ConsoleAdapter(manager, stdin=stdin, stdout=stdout)
        try:
            with _stop_on_signals(console.stop):
                await console.run()
        finally:
            scheduler.shutdown(wait=False)
            await generator.close(settings.shutdown_grace_s)
    return 0


def _watch_reload(manager: ConversationManager) -> Callable[[Path], Awaitable[bool]]:
    async def reload(path: Path) -> bool:
        try:
            await manager.reload_checkpoint(path, "system", "system", "checkpoint-watch")
        except ReloadFailed as e:
            log.warning("checkpoint watch: %s refused: %s", path.name, e)
            return False
        return True

    return reload


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
