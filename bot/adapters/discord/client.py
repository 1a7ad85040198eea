"""The discord.py client as this bot needs it: talking to Discord where the configuration says it lives, and never
waiting longer than the configured ceiling for a rate limit.

discord.py knows Discord's address only process-wide: every REST URL is built from the class attribute `Route.BASE`
when a `Route` is made, and a new gateway session opens `DiscordWebSocket.DEFAULT_GATEWAY`. Changing those would move
every client in the process (and a test's change would leak into the next). What is per client is its `HTTPClient`:
every REST call and every gateway connection of one `discord.Client` goes through it. So each client gets a
`DiscordHTTP`, which moves the URLs it is handed to the configured API, and opens the gateway that this API names
(GET /gateway/bot, Discord's documented way to find it). Interaction responses and follow-ups do not use the
HTTPClient but discord.py's webhook adapter, which it looks up in a context variable; `webhooks_at` gives the tasks
the adapter runs one of ours.

Rate limits: discord.py's HTTPClient takes a ceiling (`max_ratelimit_timeout`, at least 30 s). A 429 asking for longer
raises `discord.RateLimited` instead of sleeping; that check comes before discord.py looks at whether the limit is
global, so a ten-minute global 429 fails the one call rather than holding every call of the bot for ten minutes (a
shorter global one holds them for at most the ceiling). The webhook adapter has no ceiling at all: it sleeps whatever
a 429 asks, global or not. `DiscordWebhooks` hands it a session that raises `discord.RateLimited` on a 429 over the
ceiling before it can sleep, so both paths fail alike. (A call that keeps getting shorter 429s is retried by
discord.py at most five times.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route, json_or_text
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from bot.adapters.discord.config import DiscordConfig

log = logging.getLogger(__name__)

# What a call raises when Discord cannot be reached: refused, no such host (both OSErrors), or no answer in time.
UNREACHABLE = (OSError, TimeoutError, aiohttp.ClientConnectionError)


def build_client(config: DiscordConfig, **options: Any) -> discord.Client:
    """A `discord.Client` (``options`` as discord.py takes them) that talks to Discord at ``config.api_url``."""
    client = discord.Client(**options)
    # discord.Client makes its HTTPClient inline in __init__, with no hook to choose another; both it and the
    # connection state (from which interactions take their HTTP session) hold it, so both get ours.
    http = DiscordHTTP(config.api_url, client.loop, max_ratelimit_timeout=config.rate_limit_max_wait_s)
    client.http = http
    client._connection.http = http
    return client


@contextlib.contextmanager
def webhooks_at(config: DiscordConfig) -> Iterator[None]:
    """Within this block, and in the tasks started in it, interaction responses go to ``config.api_url``."""
    token = async_context.set(DiscordWebhooks(config.api_url, config.rate_limit_max_wait_s))
    try:
        yield
    finally:
        async_context.reset(token)


def _rebased(route: Route, api_url: str) -> Route:
    """``route`` with Discord's API base (discord.py's `Route.BASE`) replaced by ``api_url``."""
    if route.url.startswith(Route.BASE):
        route.url = api_url + route.url[len(Route.BASE) :]
    return route


class DiscordHTTP(HTTPClient):
    """discord.py's HTTP client, for the Discord API at ``api_url`` (e.g. https://discord.com/api/v10)."""

    def __init__(self, api_url: str, loop: Any, **options: Any) -> None:
        super().__init__(loop, **options)
        self.api_url = api_url.rstrip("/")
        self._gateway: yarl.URL | None = None  # what the API named; asked once, as Discord asks clients to

    async def request(self, route: Route, **kwargs: Any) -> Any:
        return await super().request(_rebased(route, self.api_url), **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> Any:
        # discord.py opens its built-in gateway for a new session; a resume goes to the URL Discord gave in READY.
        if url.startswith(str(DiscordWebSocket.DEFAULT_GATEWAY)):
            if self._gateway is None:
                try:
                    _shards, gateway, _limits = await self.get_bot_gateway()
                except discord.RateLimited as e:  # discord.py reconnects after GatewayNotFound, with a backoff
                    raise discord.GatewayNotFound() from e
                self._gateway = yarl.URL(gateway)
            url = str(self._gateway.with_query(yarl.URL(url).query))
        return await super().ws_connect(url, compress=compress)


class DiscordWebhooks(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction responses, follow-ups), for the Discord API at ``api_url``, failing
    a call whose 429 asks for more than ``max_wait_s`` instead of sleeping it out."""

    def __init__(self, api_url: str, max_wait_s: float) -> None:
        super().__init__()
        self.api_url = api_url.rstrip("/")
        self.max_wait_s = max_wait_s

    async def request(self, route: Route, session: Any, **kwargs: Any) -> Any:
        capped = _CappedSession(session, self.max_wait_s)
        return await super().request(_rebased(route, self.api_url), capped, **kwargs)


class _CappedSession:
    """The one method of an aiohttp session that discord.py's webhook adapter calls, raising `discord.RateLimited`
    for a 429 over the ceiling as the response arrives (discord.py would otherwise read it and sleep)."""

    def __init__(self, session: aiohttp.ClientSession, max_wait_s: float) -> None:
        self._session = session
        self._max_wait_s = max_wait_s

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self._session.request(method, url, **kwargs) as response:
            if response.status == 429:
                data = await json_or_text(response)  # aiohttp keeps the body: discord.py reads it again
                retry_after = data.get("retry_after") if isinstance(data, dict) else None
                if isinstance(retry_after, int | float) and retry_after > self._max_wait_s:
                    # Not the URL: it carries the interaction's token, and this logger is not the SDK's (redacted).
                    log.warning("an interaction response is rate-limited for %.0f s; not waiting", retry_after)
                    raise discord.RateLimited(retry_after)
            yield response
