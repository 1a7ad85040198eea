"""What Slack tells us happened, turned into the core's calls: mentions and DMs become chat (or a command written in
the message), and deletions (a message, a public or private channel) and uninstalls purge what we stored.

Slack redelivers an event it thinks was not acknowledged (with X-Slack-Retry-Num / `retry_attempt`); we never drop
an event for carrying that mark, because the first delivery may really have been lost. Instead the event id travels
with the message (`Incoming.event_id`) and the core records it in the shared database before anything else, so a
redelivery is answered by nobody, in this process or any other sharing the database.

Where conversations are filed: tenant = the workspace (team id), also for DMs, so uninstalling the app removes
everything from that workspace. A DM's channel is `storage.records.dm_channel(user)`, which `/forget` removes whole
(the bot's replies too). A mention's conversation is its thread: a mention outside a thread starts one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.adapters.slack.commands import SlackCommands, Spawn, slack_incoming
from bot.adapters.slack.reply import ChannelSink, SlackReply, WebApi
from bot.adapters.slack.text import plain
from bot.core.commands import parse_command
from bot.core.messages import Core
from storage.records import dm_channel

if TYPE_CHECKING:
    from bot.adapters.slack.config import SlackConfig

log = logging.getLogger(__name__)


class SlackEvents:
    """Bolt listeners for Events API events (the adapter registers each under its event name)."""

    def __init__(self, core: Core, api: WebApi, config: SlackConfig, commands: SlackCommands, spawn: Spawn) -> None:
        self._core = core
        self._api = api
        self._config = config
        self._commands = commands
        self._spawn = spawn

    async def on_mention(self, ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await ack()
        if event.get("bot_id") or event.get("subtype") or str(event.get("channel", "")).startswith("D"):
            return  # other bots; DMs arrive as message events
        self._spawn(self._answer(body, event, context, is_dm=False))

    async def on_message(self, ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await ack()
        subtype = event.get("subtype")
        if subtype == "message_deleted":
            self._spawn(self._deleted(body, event, context))
        elif subtype is None and not event.get("bot_id") and event.get("channel_type") == "im":
            self._spawn(self._answer(body, event, context, is_dm=True))
        # Everything else is ignored: edits (message_changed), bot posts, joins, and channel messages, which we
        # subscribe to only to hear of deletions; mentions in channels arrive as app_mention.

    async def on_channel_deleted(self, ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        """channel_deleted (a public channel) and group_deleted (a private one): the same payload, `channel`."""
        await ack()
        team, channel, reason = team_of(body, context), str(event["channel"]), str(event["type"])
        self._spawn(self._channel_deleted(team, channel, reason))

    async def on_uninstalled(self, ack: Any, body: dict[str, Any], context: Any) -> None:
        await ack()
        self._spawn(self._purge(team_of(body, context), "app_uninstalled"))

    async def on_tokens_revoked(self, ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await ack()
        # Only the bot's token matters: we hold no user tokens, so a user revoking theirs leaves nothing to purge.
        if event.get("tokens", {}).get("bot"):
            self._spawn(self._purge(team_of(body, context), "tokens_revoked"))

    async def _answer(self, body: dict[str, Any], event: dict[str, Any], context: Any, *, is_dm: bool) -> None:
        team, user, channel = team_of(body, context), str(event["user"]), str(event["channel"])
        command, text = parse_command(plain(event.get("text", ""), bot_user_id=context.get("bot_user_id")))
        if is_dm:
            thread = str(event.get("thread_ts") or "")  # a DM is one conversation, unless the user opens a thread
            reply_thread = thread or None
        else:
            thread = reply_thread = str(event.get("thread_ts") or event["ts"])
        sink = ChannelSink(self._api, channel, reply_thread)
        limits = self._commands.limits.channel(channel)
        reply = SlackReply(
            sink, interval_s=self._config.edit_interval_s, limit=self._config.message_limit, limits=limits
        )
        transcript = None
        if command == "summarize":  # "@bot /summarize": the thread the mention is in, else the channel
            transcript = self._commands.reader(reply, channel, event.get("thread_ts"))
        incoming = slack_incoming(
            team, user, channel, command, text, thread=thread, message_id=str(event["ts"]), transcript=transcript,
            event_id=str(body["event_id"]) if body.get("event_id") else None,
        )  # fmt: skip
        await self._core.handle(incoming, reply)

    async def _deleted(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        previous = event.get("previous_message") or {}
        deleted_ts = event.get("deleted_ts") or previous.get("ts")
        if not deleted_ts:
            return
        channel = str(event["channel"])
        if event.get("channel_type") == "im":
            if not previous.get("user"):
                return  # not a user's message; nothing of ours is keyed by it
            channel = dm_channel(str(previous["user"]))
        await self._core.messages_deleted("slack", team_of(body, context), channel, [str(deleted_ts)])

    async def _channel_deleted(self, team: str, channel: str, reason: str) -> None:
        deleted = await self._core.channel_deleted("slack", team, channel, reason=reason)
        log.info("Slack channel %s in %s deleted (%s): %d stored messages deleted", channel, team, reason, deleted)

    async def _purge(self, team: str, reason: str) -> None:
        deleted = await self._core.tenant_removed("slack", team, reason)
        log.info("Slack workspace %s removed (%s): %d stored messages deleted", team, reason, deleted)


def team_of(body: dict[str, Any], context: Any) -> str:
    """The workspace a request belongs to, wherever this kind of payload keeps it."""
    team = body.get("team_id") or (body.get("team") or {}).get("id") or context.get("team_id")
    if not team:
        raise ValueError("a Slack request without a team id: cannot tell which workspace it belongs to")
    return str(team)
