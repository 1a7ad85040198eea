"""Slack's slash commands and message shortcuts, turned into the core's commands.

`/summarize [count]` and `/translate <language> <text>` answer in the channel, where everyone can read them; `/model`,
`/forget` and the admin `/reload [name]` answer only the user who asked, as do usage notes and refusals. The
shortcuts "Summarize thread" and "Translate message" answer in the thread of the message they were used on. Each
listener acknowledges at once and leaves the work to a task, so Slack's 3-second deadline holds while the model is
busy. Summaries read the conversation from Slack (conversations.history / conversations.replies), so they cover
what people said to each other, not only what they said to the bot.

Slack never retries a command or a shortcut, but in HTTP mode a captured request stays correctly signed for the
5 minutes Bolt accepts it, so it can be replayed. Each use carries a `trigger_id` of its own: it travels as the
event id (`replay_id`), and the core, which records event ids in the shared database before anything else, answers
a replay by nobody, whichever bot process it reaches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from bot.adapters.pacing import PlatformLimits
from bot.adapters.slack.reply import (
    ChannelSink,
    Ephemeral,
    SlackRefusedError,
    SlackReply,
    WebApi,
    post_ephemeral_sender,
    response_url_sender,
)
from bot.adapters.slack.text import plain
from bot.adapters.streaming import RateLimited
from bot.core.commands import quote_language
from bot.core.messages import Core, Incoming, ReadRefused, TranscriptLine, TranscriptReader
from storage.records import ID_LENGTH, dm_channel

if TYPE_CHECKING:
    from bot.adapters.slack.config import SlackConfig

log = logging.getLogger(__name__)

COMMANDS = ("summarize", "translate", "model", "forget", "reload")
SUMMARIZE_SHORTCUT = "summarize_thread"  # callback ids of the message shortcuts in the app manifest
TRANSLATE_SHORTCUT = "translate_message"
# A thread is read to its end (its newest messages matter most), but never more than this many messages.
THREAD_READ_CAP = 1_000
PAGE = 200  # Slack's recommended page size for conversations.history / .replies
CANNOT_READ = (
    "I can't read this conversation. If it is a channel, invite me first (/invite @scratchbot), then try again."
)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class SlackCommands:
    """Bolt listeners (the adapter registers them: ``on_command`` for each of COMMANDS, the ``on_…`` shortcut
    listeners under their callback ids) and the conversation reading that summaries need."""

    def __init__(self, core: Core, api: WebApi, config: SlackConfig, spawn: Spawn, limits: PlatformLimits) -> None:
        self._core = core
        self._api = api
        self._config = config
        self._spawn = spawn
        self.limits = limits  # every reply in a channel shares its budget, answers to events included

    # Bolt passes each argument by its name; `request` (its AsyncBoltRequest) tells a replay apart (`replay_id`).
    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any, request: Any) -> None:
        await ack()
        self._spawn(self._command(command, respond, replay_id(command, request)))

    async def on_summarize_thread(self, ack: Any, shortcut: dict[str, Any], respond: Any, request: Any) -> None:
        await ack()
        self._spawn(self._shortcut(shortcut, respond, "summarize", replay_id(shortcut, request)))

    async def on_translate_message(self, ack: Any, shortcut: dict[str, Any], respond: Any, request: Any) -> None:
        await ack()
        self._spawn(self._shortcut(shortcut, respond, "translate", replay_id(shortcut, request)))

    async def _command(self, command: dict[str, Any], respond: Any, event_id: str) -> None:
        name = str(command["command"]).lstrip("/")
        team, user, channel = str(command["team_id"]), str(command["user_id"]), str(command["channel_id"])
        text = str(command.get("text") or "").strip()
        reply = self._reply(channel, None, user, respond if command.get("response_url") else None)
        transcript = self.reader(reply, channel, None) if name == "summarize" else None
        incoming = slack_incoming(team, user, channel, name, text, event_id=event_id, transcript=transcript)
        await self._core.handle(incoming, reply)

    async def _shortcut(self, shortcut: dict[str, Any], respond: Any, command: str, event_id: str) -> None:
        team, user = str(shortcut["team"]["id"]), str(shortcut["user"]["id"])
        channel, message = str(shortcut["channel"]["id"]), shortcut["message"]
        root = str(message.get("thread_ts") or message["ts"])
        reply = self._reply(channel, root, user, respond if shortcut.get("response_url") else None)
        transcript, text = None, ""
        if command == "summarize":
            transcript = self.reader(reply, channel, root)
        else:
            text = f"{quote_language(self._config.translate_language)} {plain(str(message.get('text') or ''))}"
        incoming = slack_incoming(
            team, user, channel, command, text, thread=root, event_id=event_id, transcript=transcript
        )
        await self._core.handle(incoming, reply)

    def _reply(self, channel: str, thread_ts: str | None, user: str, respond: Any) -> SlackReply:
        ephemeral: Ephemeral = (
            response_url_sender(respond)
            if respond is not None
            else post_ephemeral_sender(self._api, channel, user, thread_ts)
        )
        return SlackReply(
            ChannelSink(self._api, channel, thread_ts),
            ephemeral=ephemeral,
            interval_s=self._config.edit_interval_s,
            limit=self._config.message_limit,
            limits=self.limits.channel(channel),
        )

    def reader(self, reply: SlackReply, channel: str, thread_ts: str | None) -> TranscriptReader:
        """Reads the conversation (a thread when ``thread_ts`` is given) for the core's `summarize`; when Slack
        refuses, tells the user why and raises ReadRefused."""

        async def read(count: int) -> tuple[TranscriptLine, ...]:
            try:
                return await self.transcript(channel, thread_ts, count)
            except RateLimited as e:
                await reply.send(f"Slack asks me to wait {e.retry_after:.0f} s before reading this conversation again.")
            except SlackRefusedError as e:
                log.info("could not read Slack conversation %s: %s", channel, e.error)
                await reply.send(CANNOT_READ)
            raise ReadRefused(channel)

        return read

    async def transcript(self, channel: str, thread_ts: str | None, limit: int) -> tuple[TranscriptLine, ...]:
        """The newest ``limit`` messages of a channel (``thread_ts`` None) or of a thread, oldest first."""
        cap = limit if thread_ts is None else THREAD_READ_CAP
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(messages) < cap:
            page = min(PAGE, cap - len(messages))
            if thread_ts is None:
                response = await self._api.call("conversations.history", channel=channel, limit=page, cursor=cursor)
            else:
                response = await self._api.call(
                    "conversations.replies", channel=channel, ts=thread_ts, limit=page, cursor=cursor
                )
            messages += response.get("messages") or []
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        if thread_ts is None:
            messages.reverse()  # history comes newest first; replies oldest first
        lines = [
            TranscriptLine(author="bot" if m.get("bot_id") else str(m.get("user") or "someone"), text=plain(m["text"]))
            for m in messages
            if m.get("text") and m.get("subtype") in (None, "bot_message", "thread_broadcast")
        ]
        return tuple(lines[-limit:])


def slack_incoming(
    team: str,
    user: str,
    channel: str,
    command: str,
    text: str,
    *,
    thread: str = "",
    message_id: str | None = None,
    event_id: str | None = None,
    transcript: TranscriptReader | None = None,
) -> Incoming:
    """A Slack request as the core takes it, filed where Slack requests are filed (see `conversation_channel`)."""
    return Incoming(
        platform="slack",
        tenant=team,
        channel=conversation_channel(channel, user),
        author_id=user,
        text=text,
        command=command,
        thread=thread,
        message_id=message_id,
        event_id=event_id,
        is_dm=channel.startswith("D"),
        transcript=transcript,
    )


def replay_id(payload: Mapping[str, Any], request: Any) -> str:
    """The event id of one slash command or shortcut: ``trigger:`` and Slack's trigger id, unique to each use. Without
    one (or one too long to store), a digest of what Slack signed, "v0:<timestamp>:<body>": a replay repeats it byte
    for byte, while the same text sent again is signed at another moment. ``request`` is Bolt's AsyncBoltRequest."""
    trigger = str(payload.get("trigger_id") or "")
    if trigger and len(f"trigger:{trigger}") <= ID_LENGTH:
        return f"trigger:{trigger}"
    timestamp = next(iter(request.headers.get("x-slack-request-timestamp") or []), "")
    # In Socket Mode nothing is signed (and nothing can be replayed): the payload is all there is.
    signed = f"v0:{timestamp}:{request.raw_body}" if request.raw_body else json.dumps(payload, sort_keys=True)
    return f"body:{hashlib.sha256(signed.encode()).hexdigest()}"


def conversation_channel(channel: str, user: str) -> str:
    """Where a request is filed: a DM (channel id D…) under the user's DM channel, as the adapter files DMs."""
    return dm_channel(user) if channel.startswith("D") else channel
