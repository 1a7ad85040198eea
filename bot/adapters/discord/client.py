"""The discord.py client as this bot needs it: talking to Discord where the configuration says it lives.

discord.py knows Discord's address only process-wide: every REST URL is built from the class attribute `Route.BASE`
when a `Route` is made, and a new gateway session opens `DiscordWebSocket.DEFAULT_GATEWAY`. Changing those would move
every client in the process (and a test's change would leak into the next). What is per client is its `HTTPClient`:
every REST call and every gateway connection of one `discord.Client` goes through it. So each client gets a
`DiscordHTTP`, which moves the URLs it is handed to the configured API, and opens the gateway that this API names
(GET /gateway/bot, Discord's documented way to find it). Interaction responses and follow-ups do not use the
HTTPClient but discord.py's webhook adapter, which it looks up in a context variable; `webhooks_at` gives the tasks
the adapter runs one of ours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from bot.adapters.discord.config import DiscordConfig

log = logging.getLogger(__name__)


def build_client(config: DiscordConfig, **options: Any) -> discord.Client:
    """A `discord.Client` (``options`` as discord.py takes them) that talks to Discord at ``config.api_url``."""
    client = discord.Client(**options)
    # discord.Client makes its HTTPClient inline in __init__, with no hook to choose another; both it and the
    # connection state (from which interactions take their HTTP session) hold it, so both get ours.
    http = DiscordHTTP(config.api_url, client.loop)
    client.http = http
    client._connection.http = http
    return client


@contextlib.contextmanager
def webhooks_at(config: DiscordConfig) -> Iterator[None]:
    """Within this block, and in the tasks started in it, interaction responses go to ``config.api_url``."""
    token = async_context.set(DiscordWebhooks(config.api_url))
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
                _shards, gateway, _limits = await self.get_bot_gateway()
                self._gateway = yarl.URL(gateway)
            url = str(self._gateway.with_query(yarl.URL(url).query))
        return await super().ws_connect(url, compress=compress)


class DiscordWebhooks(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction responses, follow-ups), for the Discord API at ``api_url``."""

    def __init__(self, api_url: str) -> None:
        super().__init__()
        self.api_url = api_url.rstrip("/")

    async def request(self, route: Route, session: Any, **kwargs: Any) -> Any:
        return await super().request(_rebased(route, self.api_url), session, **kwargs)
