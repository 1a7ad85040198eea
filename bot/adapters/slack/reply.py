"""How the core's answers reach Slack: streamed into a channel or thread by posting a placeholder and editing it
(`StreamedMessages` over `chat.postMessage` / `chat.update`), and short notices shown only to the user who asked
(a slash command's `response_url`, else `chat.postEphemeral`).

Every text is escaped before it is split, so the limit counts the characters Slack receives. Calls go through
`WebApi`, which the adapter implements over slack_sdk (the one module that imports it): a 429 arrives here as
`RateLimited` with Slack's Retry-After, any other refusal as `SlackRefusedError`. The client is built without
slack_sdk's rate-limit retry handler, so the wait happens in exactly one place.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from bot.adapters.pacing import ChannelLimits
from bot.adapters.slack.text import MESSAGE_LIMIT, POST_OPTIONS, escape, escape_stream
from bot.adapters.splitting import split_message
from bot.adapters.streaming import EMPTY_ANSWER, StreamedMessages, send_whole, until_accepted

log = logging.getLogger(__name__)

PLACEHOLDER = "…"
# chat.postMessage errors that mean "not here", as opposed to "not now".
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})
# A whole message (not streamed) that keeps getting 429s is given up after this many tries.
SEND_ATTEMPTS = 5
Ephemeral = Callable[[str], Awaitable[None]]


class SlackRefusedError(Exception):
    """Slack answered a Web API call with an error other than a 429; ``error`` is its code (``not_in_channel``)."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"Slack refused {method}: {error}")
        self.method = method
        self.error = error


class WebApi(Protocol):
    async def call(self, method: str, **params: Any) -> Mapping[str, Any]:
        """Call a Web API method (``chat.postMessage``) and return its JSON body; raise `RateLimited` on a 429 and
        `SlackRefusedError` on any other error."""


class ChannelSink:
    """Messages in one channel, or in one thread of it (`thread_ts`); handles are message timestamps."""

    def __init__(self, api: WebApi, channel: str, thread_ts: str | None) -> None:
        self._api = api
        self.channel = channel
        self.thread_ts = thread_ts

    async def post(self, text: str) -> str:
        response = await self._api.call(
            "chat.postMessage", channel=self.channel, thread_ts=self.thread_ts, text=text, **POST_OPTIONS
        )
        return str(response["ts"])

    async def edit(self, handle: str, text: str) -> None:
        await self._api.call("chat.update", channel=self.channel, ts=handle, text=text, parse="none", link_names=False)


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
        limits: ChannelLimits | None = None,
    ) -> None:
        """``limits``: the channel's share of Slack's rate limits (the adapter's pacer and late edits)."""
        self._sink = sink
        self._ephemeral = ephemeral
        self._interval = interval_s
        self._limit = limit
        self._limits = limits or ChannelLimits(sink.channel)

    async def send(self, text: str) -> None:
        if self._ephemeral is None:
            await send_whole(self._sink.post, escape(text), self._limit, self._limits, attempts=SEND_ATTEMPTS)
            return
        for chunk in split_message(escape(text), self._limit):
            await self._ephemeral(chunk)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        raw: list[str] = []

        async def keeping(source: AsyncIterator[str]) -> AsyncIterator[str]:
            async for delta in source:
                raw.append(delta)
                yield delta

        streamed = StreamedMessages(
            self._sink, limit=self._limit, interval_s=self._interval, placeholder=PLACEHOLDER, limits=self._limits
        )
        try:
            await streamed.run(escape_stream(keeping(deltas)))
        except SlackRefusedError as e:
            # A command used where the bot is not a member: the placeholder is refused before any text is read.
            # Show the answer to the asker alone rather than lose it.
            if self._ephemeral is None or streamed.messages or e.error not in CANNOT_POST:
                raise
            log.info("cannot post in %s (%s); answering ephemerally", self._sink.channel, e.error)
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


def post_ephemeral_sender(api: WebApi, channel: str, user: str, thread_ts: str | None) -> Ephemeral:
    """Ephemeral notices through chat.postEphemeral, for requests that came without a response_url."""

    async def send(text: str) -> None:
        await until_accepted(
            lambda: api.call(
                "chat.postEphemeral", channel=channel, user=user, text=text, thread_ts=thread_ts, **POST_OPTIONS
            ),
            "ephemeral post",
            attempts=SEND_ATTEMPTS,
        )

    return send
