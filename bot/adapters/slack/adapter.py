"""Slack, through Bolt (async): the one module that imports slack_bolt and slack_sdk. It builds their clients, runs
the transport, registers the listeners (`SlackEvents` for events, `SlackCommands` for slash commands and shortcuts)
and owns the tasks they hand their work to.

Every listener acknowledges first and does its work in a task the adapter owns, so Slack gets its answer well within
3 s however busy the model is, and `close` can let answers in progress finish.

Two transports, one chosen by `SlackConfig.mode`: Socket Mode (an app-level token; no public URL) and HTTP mode
(Bolt's request verification: signature and a timestamp under 5 minutes old). Both run on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.redaction import install_redaction
from bot.adapters.slack.commands import COMMANDS, SUMMARIZE_SHORTCUT, TRANSLATE_SHORTCUT, SlackCommands
from bot.adapters.slack.config import SlackConfig
from bot.adapters.slack.events import SlackEvents
from bot.adapters.slack.reply import SlackRefusedError
from bot.adapters.slack.text import SECRETS
from bot.adapters.streaming import RateLimited
from bot.core.messages import Core
from bot.draining import drain

log = logging.getLogger(__name__)
# Bolt and slack_sdk log through this logger (and loggers they copy its filters to), so secrets are scrubbed.
SDK_LOG = logging.getLogger(f"{__name__}.sdk")
SDK_LOG.addFilter(SECRETS)
# Slack's Retry-After is whole seconds; when a 429 comes without one, wait this long.
DEFAULT_RETRY_AFTER_S = 1.0


class SlackAdapter:
    name = "slack"

    def __init__(self, core: Core, config: SlackConfig) -> None:
        self._core = core
        self._config = config
        SECRETS.add(config.bot_token, config.app_token, config.signing_secret)
        for sdk in ("slack_sdk", "slack_bolt"):  # their own module loggers too: the webhook client behind
            install_redaction(sdk, SECRETS)  # `respond` logs each response_url at DEBUG
        # No rate-limit retry handler: a 429 reaches StreamedMessages, which waits Retry-After itself.
        self.client = AsyncWebClient(
            token=config.bot_token,
            base_url=config.api_url,  # Bolt's per-request clients copy it; Socket Mode asks it for its URL
            logger=SDK_LOG,
            retry_handlers=[AsyncConnectionErrorRetryHandler()],
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=config.signing_secret or "",
            logger=SDK_LOG,
            name="scratchbot",
            request_verification_enabled=True,  # HTTP mode: signature and timestamp checked (Socket Mode skips it)
            ignoring_self_events_enabled=True,  # our own posts never come back as questions
            process_before_response=False,  # listeners ack and hand work to our own tasks either way
        )
        self.api = SdkWebApi(self.client)
        self._commands = SlackCommands(core, self.api, config, self._spawn)
        self._events = SlackEvents(core, self.api, config, self._commands, self._spawn)
        self._register()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._stopped = False
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None  # HTTP mode: the port actually bound, once `ready`
        self.ready = asyncio.Event()  # set once connected (Socket Mode) or listening (HTTP mode)

    def _register(self) -> None:
        self.app.event("app_mention")(self._events.on_mention)
        self.app.event("message")(self._events.on_message)
        self.app.event("channel_deleted")(self._events.on_channel_deleted)
        self.app.event("group_deleted")(self._events.on_channel_deleted)
        self.app.event("app_uninstalled")(self._events.on_uninstalled)
        self.app.event("tokens_revoked")(self._events.on_tokens_revoked)
        for name in COMMANDS:
            self.app.command(f"/{name}")(self._commands.on_command)
        self.app.shortcut(SUMMARIZE_SHORTCUT)(self._commands.on_summarize_thread)
        self.app.shortcut(TRANSLATE_SHORTCUT)(self._commands.on_translate_message)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `close`. Raises SlackApiError when Slack refuses the bot or app token."""
        await self.client.auth_test()  # a bad bot token fails here, loudly, instead of on the first message
        try:
            if self._config.transport == "socket":
                await self._start_socket_mode()
            else:
                await self._start_http()
            self.ready.set()
            await self._closing.wait()
        finally:
            await self._stop_transport()

    async def _start_socket_mode(self) -> None:
        assert self._config.app_token is not None  # SlackConfig checked it
        self._socket = AsyncSocketModeHandler(
            self.app,
            self._config.app_token,
            logger=SDK_LOG,
            web_client=self.client,
            ping_interval=self._config.ping_interval_s,
        )
        # Opening the first URL ourselves makes a bad app token raise here; the SDK's connect() would retry forever.
        opened = await self.client.apps_connections_open(app_token=self._config.app_token)
        self._socket.client.wss_uri = opened["url"]
        await self._socket.connect_async()
        log.info("Slack connected in Socket Mode")

    async def _start_http(self) -> None:
        web_app = web.Application()
        web_app.router.add_post(self._config.http_path, self._on_http_request)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._config.http_host, self._config.http_port).start()
        self.http_port = self._runner.addresses[0][1]
        log.info("Slack HTTP mode listening on %s:%d%s", self._config.http_host, self.http_port, self._config.http_path)

    async def _on_http_request(self, request: web.Request) -> web.Response:
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError:  # a body that is neither JSON nor a form Bolt can read
            return web.Response(status=400, text="malformed request")
        return await to_aiohttp_response(await self.app.async_dispatch(bolt_request))

    async def _stop_transport(self) -> None:
        socket, self._socket = self._socket, None
        runner, self._runner = self._runner, None
        if socket is not None:
            await socket.close_async()
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._closing.set()
        await self._stop_transport()  # no new events; Slack redelivers unacknowledged ones to another process
        if late := await drain(self._tasks, self._config.close_grace_s):
            log.warning("%d Slack answers cut short at shutdown", late)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # the boundary of one Slack request: the core's own errors never get here
            log.exception("failed to handle a Slack request")


class SdkWebApi:
    """`slack_reply.WebApi` over slack_sdk's client: the one place slack_sdk's errors are read. A 429 becomes
    `RateLimited` with Slack's Retry-After, any other error `SlackRefusedError` with Slack's error code."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client

    async def call(self, method: str, **params: Any) -> Mapping[str, Any]:
        # The typed method (chat_postMessage for chat.postMessage) encodes its arguments the way Slack expects.
        typed = getattr(self._client, method.replace(".", "_"))
        try:
            response = await typed(**params)
        except SlackApiError as e:
            # Usually a SlackResponse; an unreadable body comes with aiohttp's raw response (`status`, no `get`).
            status = getattr(e.response, "status_code", getattr(e.response, "status", None))
            if status == 429:
                raise RateLimited(_retry_after(getattr(e.response, "headers", None))) from e
            error = e.response.get("error") if hasattr(e.response, "get") else None
            raise SlackRefusedError(method, str(error or f"HTTP {status}, unreadable answer")) from e
        return response.data if isinstance(response.data, dict) else {}


def _retry_after(headers: Mapping[str, Any] | None) -> float:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER_S
