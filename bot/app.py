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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

from bot.adapters.console import ConsoleAdapter
from bot.adapters.platform import CredentialsRevoked, PlatformAdapter, PlatformStartError
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.checkpoint_names import find_checkpoint
from bot.core.conversation import ConversationManager, ManagerConfig
from bot.core.ratelimit import RateLimiter
from bot.inference.generator import ReloadFailed
from bot.inference.local import LocalGenerator
from bot.jobs import STOP_GRACE_S, CheckpointWatcher, build_jobs
from bot.settings import Settings
from llm.checkpoints.load import load_checkpoint
from llm.prompts import Encoder, answer_length_problem
from llm.tokenizer import Tokenizer
from storage.store import open_store

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start as configured; the message says what to do."""


# How each platform's adapter is built from the settings. The SDK is imported only when its platform is configured,
# so a console-only installation needs neither discord.py nor slack-bolt.
AdapterFactory = Callable[[ConversationManager, Settings], PlatformAdapter]


def _discord_adapter(manager: ConversationManager, settings: Settings) -> PlatformAdapter:
    from bot.adapters.discord import DiscordAdapter, DiscordConfig

    assert settings.discord_token is not None  # only called for configured platforms
    return DiscordAdapter(
        manager,
        DiscordConfig(
            token=settings.discord_token.get_secret_value(),
            api_url=settings.discord_api_url,
            rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
            message_content=settings.discord_message_content,
            close_grace_s=settings.shutdown_grace_s,
        ),
    )


def _slack_adapter(manager: ConversationManager, settings: Settings) -> PlatformAdapter:
    from bot.adapters.slack.adapter import SlackAdapter
    from bot.adapters.slack.config import slack_config

    return SlackAdapter(manager, slack_config(settings))


ADAPTERS: dict[str, AdapterFactory] = {"discord": _discord_adapter, "slack": _slack_adapter}


def build_adapters(
    manager: ConversationManager, settings: Settings, factories: Mapping[str, AdapterFactory] | None = None
) -> list[PlatformAdapter]:
    """One adapter per configured platform; a missing SDK is a user error naming the extra to install."""
    adapters = []
    for platform in settings.platforms:
        try:
            adapters.append((factories or ADAPTERS)[platform](manager, settings))
        except ImportError as e:
            raise StartupError(
                f"{platform} is configured but its library is missing ({e.name}): "
                f"pip install 'scratchbot[{platform}]'"  # each platform's extra bears its name
            ) from None
        except ValueError as e:  # the adapter's own configuration check
            raise StartupError(f"{platform} cannot start: {e}") from None
    return adapters


async def run_service(
    settings: Settings,
    *,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    factories: Mapping[str, AdapterFactory] | None = None,
) -> int:
    """Serve every configured platform (the terminal when none is) until a signal or a platform fails for good.
    Returns the exit status: 0 after a requested stop, 1 when a platform adapter failed."""
    path = find_checkpoint(settings.checkpoint, settings.checkpoints_dir)
    tokenizer = Tokenizer()
    loaded = await asyncio.to_thread(load_checkpoint, path, settings.device)
    check_answer_length(settings, loaded.config.context_length, path.name, tokenizer)
    generator = LocalGenerator(
        loaded,
        tokenizer,
        name=path.name,
        precision=settings.precision,
        max_batch=settings.max_batch,
        queue_size=settings.queue_size,
        tenant_max_active=settings.tenant_share,
    )
    in_terminal = not settings.platforms
    async with open_store(settings.resolved_database_url, settings.database_timeouts) as store:
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
                failure_note=f"Details are in {settings.console_log}." if in_terminal else "",
            ),
        )
        watcher = None
        if settings.watch_checkpoints:
            watcher = CheckpointWatcher(settings.checkpoints_dir, _watch_reload(manager), path)
        jobs = build_jobs(
            store, retention_days=settings.retention_days, watcher=watcher, watch_interval_s=settings.watch_interval_s
        )
        jobs.start()
        try:
            adapters = build_adapters(manager, settings, factories)
            if not adapters:
                console = ConsoleAdapter(manager, stdin=stdin, stdout=stdout, log_path=settings.console_log)
                with _stop_on_signals(console.stop):
                    await console.run()
                return 0
            return await serve_platforms(adapters)
        finally:
            await jobs.stop(min(settings.shutdown_grace_s, STOP_GRACE_S))  # before the generator and store go away
            await generator.close(settings.shutdown_grace_s)


def check_answer_length(settings: Settings, context_length: int, name: str, encoder: Encoder) -> None:
    """Refuse a model too small for the prompt template, and a SCRATCHBOT_MAX_NEW_TOKENS its context cannot hold
    beside a prompt: every message would fail. The default is not refused: it is lowered to what the model allows."""
    if problem := answer_length_problem(1, context_length, encoder):
        raise StartupError(f"{name} cannot be served: {problem}; serve a model with a longer context")
    if settings.is_set("max_new_tokens") and (
        problem := answer_length_problem(settings.max_new_tokens, context_length, encoder)
    ):
        raise StartupError(f"SCRATCHBOT_MAX_NEW_TOKENS={settings.max_new_tokens} is too long for {name}: {problem}")


async def serve_platforms(adapters: list[PlatformAdapter]) -> int:
    """Run the adapters side by side until a signal, then close them all (each lets its answers in progress finish).

    A platform that cannot start stops the whole service with `StartupError` (a misconfiguration is fixed before
    serving half of it). A platform that fails while serving (its token revoked, a defect) is logged at ERROR and the
    others keep serving; once none is left the status is 1, so a supervisor restarts or alerts rather than keep a
    process that answers nobody. Returns 0 after a requested stop."""
    stopping = asyncio.Event()
    runs = {asyncio.create_task(adapter.run(), name=f"adapter-{adapter.name}"): adapter for adapter in adapters}
    waiter = asyncio.create_task(stopping.wait())
    log.info("serving %s", ", ".join(adapter.name for adapter in adapters))
    status, serving, failed_start = 0, set(runs), None
    with _stop_on_signals(stopping.set):
        while serving and not stopping.is_set() and failed_start is None:
            done, _ = await asyncio.wait({*serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {waiter}:
                serving.discard(task)
                failed_start = failed_start or _platform_ended(runs[task].name, task)
    if not serving:
        status = 1
    waiter.cancel()
    await asyncio.gather(*(_close(adapter) for adapter in adapters))
    for task in runs:
        if not task.done():
            task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    if failed_start is not None:
        raise StartupError(str(failed_start)) from None
    if status:
        log.error("no platform is left to serve; stopping")
    return status


def _platform_ended(name: str, task: asyncio.Task[None]) -> PlatformStartError | None:
    """Log why a platform stopped serving; return the error when it never started."""
    error = task.exception()
    if isinstance(error, PlatformStartError):
        return error
    if isinstance(error, CredentialsRevoked):
        log.error("the %s adapter stopped: %s", name, error)  # one line: the message says what to do
    elif error is not None:
        log.error("the %s adapter failed: %s", name, error, exc_info=error)
    else:
        log.error("the %s adapter stopped on its own", name)
    return None


async def _close(adapter: PlatformAdapter) -> None:
    try:
        await adapter.close()
    except Exception:  # one platform's failing shutdown must not keep the others from closing
        log.exception("closing the %s adapter failed", adapter.name)


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
