"""Slack, through Bolt (async): the one module that imports slack_bolt and slack_sdk. It builds their clients, runs
the transport, registers the listeners (`SlackEvents` for events, `SlackCommands` for slash commands and shortcuts)
and owns the tasks they hand their work to.

Every listener acknowledges first and does its work in a task the adapter owns, so Slack gets its answer well within
3 s however busy the model is, and `close` can let answers in progress finish.

Two transports, one chosen by `SlackConfig.mode`: Socket Mode (an app-level token; no public URL) and HTTP mode
(Bolt's request verification: signature and a timestamp under 5 minutes old). Both run on the caller's event loop.

Failures reach the operator as one sentence naming the setting to fix. At start-up, Slack unreachable or a token
refused is a `PlatformStartError`. While serving, a Web API answer calling a token dead (`invalid_auth`,
`token_revoked`, ...) to any client, ours, Bolt's or Socket Mode's (`CredentialsWatch` sees them all), stops the
adapter for good: the transport closes, answers in progress end quietly (none could reach Slack), and `run` raises
`CredentialsRevoked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler, HttpRequest, HttpResponse, RetryState
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.pacing import LateEdits, PlatformLimits
from bot.adapters.platform import CredentialsRevoked, PlatformStartError
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
# Bolt and slack_sdk log through this logger; its records are scrubbed like every other (`install_redaction`).
SDK_LOG = logging.getLogger(f"{__name__}.sdk")
START_TIMEOUT_S = 30.0  # how long opening the Socket Mode connection may take at start-up
# Slack's Retry-After is whole seconds; when a 429 comes without one, wait this long.
DEFAULT_RETRY_AFTER_S = 1.0
# Web API errors that mean the token itself is dead, not that one call was refused: nothing works until someone acts.
CREDENTIALS_REFUSED = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"})
BOT_TOKEN, APP_TOKEN = "SCRATCHBOT_SLACK_BOT_TOKEN", "SCRATCHBOT_SLACK_APP_TOKEN"  # the settings, as named to users
TOKEN_HELP = {  # what to do when Slack refuses a token at start-up
    BOT_TOKEN: "set it to the Bot User OAuth Token (xoxb-...) on the app's OAuth & Permissions page, after installing "
    "the app to the workspace",
    APP_TOKEN: "set it to an app-level token (xapp-...) with the connections:write scope, from the app's Basic "
    "Information page, and turn Socket Mode on for the app",
}


class SlackAdapter:
    name = "slack"

    def __init__(self, core: Core, config: SlackConfig, late_edits: LateEdits | None = None) -> None:
        """``late_edits``: where answers rate-limited past the ceiling are finished (tests pass one on virtual time)."""
        self._core = core
        self._config = config
        SECRETS.add(config.bot_token, config.app_token, config.signing_secret)
        install_redaction("slack", SECRETS)  # every record, the webhook client's behind `respond` included
        self._refused: CredentialsRevoked | None = None  # set when Slack called a token dead while serving
        # No rate-limit retry handler: a 429 reaches StreamedMessages, which waits Retry-After itself. The watch
        # comes first so that it sees every answer.
        self.client = AsyncWebClient(
            token=config.bot_token,
            base_url=config.api_url,  # Bolt's per-request clients copy it; Socket Mode asks it for its URL
            logger=SDK_LOG,
            retry_handlers=[
                CredentialsWatch(config.app_token, self._credentials_refused),
                AsyncConnectionErrorRetryHandler(),
            ],
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
        self.api = SdkWebApi(self.client, refused=lambda: self._refused is not None)
        # Slack limits message writes per channel (about one a second): every answer in a channel shares one budget.
        self._limits = PlatformLimits(config.pace, config.rate_limit_max_wait_s, late_edits)
        self._commands = SlackCommands(core, self.api, config, self._spawn, self._limits)
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
        """Serve until `close`. Raises `PlatformStartError` when Slack cannot be reached or refuses a token at
        start-up, and `CredentialsRevoked` when it refuses one while serving (the adapter has stopped then)."""
        try:
            with self._start_failures("auth.test", BOT_TOKEN):
                await self.client.auth_test()  # a bad bot token fails here, loudly, instead of on the first message
            if self._config.transport == "socket":
                await self._start_socket_mode()
            else:
                await self._start_http()
            self.ready.set()
            await self._closing.wait()
        finally:
            await self._stop_transport()
        if self._refused is not None:
            await drain(self._tasks, 0)  # cancelled already; let them unwind before we report
            raise self._refused

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
        with self._start_failures("apps.connections.open", APP_TOKEN):
            opened = await self.client.apps_connections_open(app_token=self._config.app_token)
            url = opened.get("url")
            if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
                raise ValueError(f"apps.connections.open gave no WebSocket URL ({url!r})")
        self._socket.client.wss_uri = url
        try:  # the SDK's connect() retries forever: a proxy blocking the WebSocket would leave a silent bot
            await asyncio.wait_for(self._socket.connect_async(), START_TIMEOUT_S)
        except TimeoutError:
            raise PlatformStartError(
                f"cannot open Slack's Socket Mode connection within {START_TIMEOUT_S:.0f} s: check that this machine "
                "(or its proxy) lets WebSocket connections to wss-primary.slack.com through, or use HTTP mode"
            ) from None
        log.info("Slack connected in Socket Mode")

    async def _start_http(self) -> None:
        host, port = self._config.http_host, self._config.http_port
        web_app = web.Application()
        web_app.router.add_post(self._config.http_path, self._on_http_request)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as e:  # the port taken, the address not this machine's
            raise PlatformStartError(
                f"Slack HTTP mode cannot listen on {host}:{port} ({e.strerror or e}): set SCRATCHBOT_SLACK_HTTP_PORT "
                "(and SCRATCHBOT_SLACK_HTTP_HOST) to an address of this machine that nothing else listens on"
            ) from None
        self.http_port = self._runner.addresses[0][1]
        log.info("Slack HTTP mode listening on %s:%d%s", host, self.http_port, self._config.http_path)

    @contextlib.contextmanager
    def _start_failures(self, method: str, setting: str) -> Iterator[None]:
        """A start-up call that fails becomes one `PlatformStartError` sentence saying what to do."""
        try:
            yield
        except SlackApiError as e:
            status, error = _refusal(e)
            if error is None:  # a proxy's error page, Slack down, or no Slack behind the URL at all
                raise PlatformStartError(
                    f"{self._config.api_url} answered {method} with HTTP {status}, not as Slack answers: if Slack is "
                    "up, set SCRATCHBOT_SLACK_API_URL to its Web API (unset: Slack's own)"
                ) from None
            if error not in CREDENTIALS_REFUSED and error != "not_allowed_token_type":  # e.g. ratelimited, fatal_error
                raise PlatformStartError(f"Slack answered {method} with {error}: try again in a few minutes") from None
            raise PlatformStartError(
                f"Slack refused {setting} ({error} from {method}): {TOKEN_HELP[setting]}"
            ) from None
        except (aiohttp.ClientError, OSError) as e:  # refused, no route, DNS, TLS; a timeout is an OSError too
            raise PlatformStartError(
                f"cannot reach Slack's Web API at {self._config.api_url} ({str(e) or type(e).__name__}): check this "
                "machine's network connection, or SCRATCHBOT_SLACK_API_URL if Slack is reached through a proxy"
            ) from None
        except Exception as e:  # an answer that is no Slack answer at all: plain text, JSON of another shape
            raise PlatformStartError(
                f"{self._config.api_url} answered {method} with something Slack never sends ({type(e).__name__}): "
                "set SCRATCHBOT_SLACK_API_URL to Slack's Web API (unset: Slack's own)"
            ) from None

    def _credentials_refused(self, setting: str, method: str, error: str) -> None:
        """`CredentialsWatch` heard Slack call a token dead. While serving, stop for good: nothing more can reach
        Slack until someone acts. (At start-up `_start_failures` says so instead.)"""
        if not self.ready.is_set() or self._stopped or self._refused is not None:
            return
        self._refused = CredentialsRevoked(
            f"Slack refused {setting} while serving ({error} from {method}): the token was revoked or regenerated, "
            f"the app uninstalled, or the workspace deactivated; set {setting} to the app's current token and restart"
        )
        self._closing.set()  # run() closes the transport and raises it
        for task in self._tasks:
            task.cancel()  # answers in progress can reach nobody now; SdkWebApi ends each quietly

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
        await self._limits.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._refused is not None:  # an event that arrived as we stopped: nothing it does could reach Slack
            work.close()
            return
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


class CredentialsWatch(AsyncRetryHandler):
    """Sees every Web API answer our tokens get and reports those calling a token dead: ``refused(setting, method,
    error)``. It never asks for a retry. A retry handler because slack_sdk shows each answer to its client's retry
    handlers and Bolt copies them into the client it builds for each request: this is the one place that sees the
    calls of all three, ours, Bolt's (auth.test) and Socket Mode's reconnects (apps.connections.open)."""

    def __init__(self, app_token: str | None, refused: Callable[[str, str, str], None]) -> None:
        super().__init__(max_retry_count=0)
        self._app_token = app_token
        self._refused = refused

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        body = response.body if response is not None else None
        code = body.get("error") if isinstance(body, dict) else None
        if code in CREDENTIALS_REFUSED:
            bearer = next(iter(request.headers.get("Authorization") or []), "").removeprefix("Bearer ")
            setting = APP_TOKEN if self._app_token and bearer == self._app_token else BOT_TOKEN
            self._refused(setting, request.url.rsplit("/", 1)[-1], str(code))
        return False


class SdkWebApi:
    """`slack_reply.WebApi` over slack_sdk's client: the one place slack_sdk's errors are read. A 429 becomes
    `RateLimited` with Slack's Retry-After, a dead token `asyncio.CancelledError` (the adapter has stopped and
    cancelled the work; ``refused()`` says so), any other error `SlackRefusedError` with Slack's error code."""

    def __init__(self, client: AsyncWebClient, refused: Callable[[], bool] = lambda: False) -> None:
        self._client = client
        self._refused = refused

    async def call(self, method: str, **params: Any) -> Mapping[str, Any]:
        if self._refused():  # e.g. the final edit of an answer being cancelled: it could only be refused again
            raise asyncio.CancelledError(f"{method} not called: Slack refused our token")
        # The typed method (chat_postMessage for chat.postMessage) encodes its arguments the way Slack expects.
        typed = getattr(self._client, method.replace(".", "_"))
        try:
            response = await typed(**params)
        except SlackApiError as e:
            status, error = _refusal(e)
            if status == 429:
                raise RateLimited(_retry_after(getattr(e.response, "headers", None))) from e
            if error in CREDENTIALS_REFUSED:
                # An answer that cannot reach Slack is no error of this request: it ends as the adapter stops,
                # without a traceback per message; the operator hears of the token once (`CredentialsRevoked`).
                raise asyncio.CancelledError(f"Slack refused our token: {error}") from e
            raise SlackRefusedError(method, error or f"HTTP {status}, unreadable answer") from e
        return response.data if isinstance(response.data, dict) else {}


def _refusal(e: SlackApiError) -> tuple[int | None, str | None]:
    """The HTTP status of a failed call and Slack's error code, None when the body was no Slack answer (a proxy's
    error page). `e.response` is a SlackResponse, or aiohttp's raw response (`status`, no `data`) if unreadable."""
    status = getattr(e.response, "status_code", getattr(e.response, "status", None))
    data = getattr(e.response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return status, str(error) if error else None


def _retry_after(headers: Mapping[str, Any] | None) -> float:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER_S
