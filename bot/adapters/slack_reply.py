"""How the core's answers reach Slack: streamed into a channel or thread by posting a placeholder and editing it
(`StreamedMessages` over `chat.postMessage` / `chat.update`), and short notices shown only to the user who asked
(a slash command's `response_url`, else `chat.postEphemeral`).

Every text is escaped before it is split, so the limit counts the characters Slack receives. A 429 becomes
`RateLimited` with Slack's Retry-After; the Web API client is built without slack_sdk's rate-limit retry handler, so
the wait happens in exactly one place.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack_text import MESSAGE_LIMIT, POST_OPTIONS, escape, escape_stream
from bot.adapters.splitting import split_message
from bot.adapters.streaming import EMPTY_ANSWER, RateLimited, StreamedMessages, until_accepted

log = logging.getLogger(__name__)

PLACEHOLDER = "…"
# chat.postMessage errors that mean "not here", as opposed to "not now".
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})
# A whole message (not streamed) that keeps getting 429s is given up after this many tries.
SEND_ATTEMPTS = 5
# Slack's Retry-After is whole seconds; when a 429 comes without one, wait this long.
DEFAULT_RETRY_AFTER_S = 1.0

T = TypeVar("T")
Ephemeral = Callable[[str], Awaitable[None]]


def retry_after(error: SlackApiError) -> float:
    headers = error.response.headers or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER_S


async def calling(call: Awaitable[T]) -> T:
    """Await a Web API call; a 429 becomes `RateLimited` so the caller can wait as Slack asked."""
    try:
        return await call
    except SlackApiError as e:
        if e.response.status_code == 429:
            raise RateLimited(retry_after(e)) from e
        raise


class ChannelSink:
    """Messages in one channel, or in one thread of it (`thread_ts`); handles are message timestamps."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None) -> None:
        self._client = client
        self.channel = channel
        self.thread_ts = thread_ts

    async def post(self, text: str) -> str:
        response = await calling(
            self._client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, text=text, **POST_OPTIONS)
        )
        return str(response["ts"])

    async def edit(self, handle: str, text: str) -> None:
        await calling(
            self._client.chat_update(channel=self.channel, ts=handle, text=text, parse="none", link_names=False)
        )


class SlackReply:
    """The core's `Reply` for one Slack request. Answers stream into ``sink``; whole messages (usage, refusals,
    command results) go to ``ephemeral`` when given (only the asker sees them), else into ``sink`` too."""

    def __init__(
        self,
        sink: ChannelSink,
        *,
        ephemeral: Ephemeral | None = None,
        interval_s: float = 1.0,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self._sink = sink
        self._ephemeral = ephemeral
        self._interval = interval_s
        self._limit = limit

    async def send(self, text: str) -> None:
        for chunk in split_message(escape(text), self._limit):
            if self._ephemeral is not None:
                await self._ephemeral(chunk)
            else:
                await until_accepted(lambda chunk=chunk: self._sink.post(chunk), "post", attempts=SEND_ATTEMPTS)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        raw: list[str] = []

        async def keeping(source: AsyncIterator[str]) -> AsyncIterator[str]:
            async for delta in source:
                raw.append(delta)
                yield delta

        streamed = StreamedMessages(self._sink, limit=self._limit, interval_s=self._interval, placeholder=PLACEHOLDER)
        try:
            await streamed.run(escape_stream(keeping(deltas)))
        except SlackApiError as e:
            # A command used where the bot is not a member: the placeholder is refused before any text is read.
            # Show the answer to the asker alone rather than lose it.
            if self._ephemeral is None or streamed.messages or e.response.get("error") not in CANNOT_POST:
                raise
            log.info("cannot post in %s (%s); answering ephemerally", self._sink.channel, e.response.get("error"))
            raw += [delta async for delta in deltas]
            await self.send("".join(raw) or EMPTY_ANSWER)
        return "".join(raw)


def response_url_sender(respond: Callable[..., Awaitable[Any]]) -> Ephemeral:
    """Ephemeral notices through Bolt's `respond` (the request's response_url: valid 30 min, 5 messages)."""

    async def send(text: str) -> None:
        response = await respond(text=text, response_type="ephemeral", replace_original=False)
        if getattr(response, "status_code", 200) != 200:
            log.warning("an ephemeral reply was refused by Slack (HTTP %s)", response.status_code)

    return send


def post_ephemeral_sender(client: AsyncWebClient, channel: str, user: str, thread_ts: str | None) -> Ephemeral:
    """Ephemeral notices through chat.postEphemeral, for requests that came without a response_url."""

    async def send(text: str) -> None:
        await until_accepted(
            lambda: calling(
                client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts, **POST_OPTIONS)
            ),
            "ephemeral post",
            attempts=SEND_ATTEMPTS,
        )

    return send
