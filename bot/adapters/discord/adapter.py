"""The Discord adapter: mentions, DMs, slash commands and context menus in as `Incoming`, answers out through
`StreamedMessages`; what happens on Discord's side (deletions, a removed guild) reaches storage.

Scope of a conversation: guild + channel + thread (a thread is its own conversation; a reply chain is part of its
channel's). DMs are filed under `dm_tenant(user)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator

import discord
from discord import app_commands

from bot.adapters.discord.client import UNREACHABLE, build_client, webhooks_at
from bot.adapters.discord.commands import build_commands
from bot.adapters.discord.config import DiscordConfig
from bot.adapters.discord.reply import MESSAGE_LIMIT, NO_MENTIONS, REFUSED, ChannelSink, InteractionSink
from bot.adapters.pacing import LateEdits, PlatformLimits
from bot.adapters.platform import CredentialsRevoked, PlatformStartError
from bot.adapters.redaction import SecretRedactingFilter, install_redaction, secret_path
from bot.adapters.streaming import SinkReply
from bot.core.commands import parse_command
from bot.core.messages import Core, Incoming, TranscriptLine, TranscriptReader
from bot.draining import drain
from storage.records import dm_tenant

log = logging.getLogger(__name__)

PLATFORM = "discord"
START_TIMEOUT_S = 30.0  # how long logging in may take at start-up before Discord counts as unreachable
RESTARTING = "I'm restarting right now; please try again in a minute."
CUT_SHORT_S = 5.0  # at shutdown, how long an answer cut short has to show its final text
GATEWAY_AUTHENTICATION_FAILED = 4004  # the close code for a token the gateway does not accept (any more)
WRONG_TOKEN = (
    "Discord refused the bot token: copy the current one from the developer portal (your application -> Bot -> "
    "Reset Token) into SCRATCHBOT_DISCORD_TOKEN and start the bot again"
)
INTENT_NOT_ENABLED = (
    'Discord refused the message content intent: enable "Message Content Intent" on the Bot page of the developer '
    "portal, or unset SCRATCHBOT_DISCORD_MESSAGE_CONTENT"
)
# Interaction tokens travel in REST paths: /webhooks/<app id>/<token>/... and /interactions/<id>/<token>/callback.
TOKEN_PATHS = (secret_path(r"/webhooks/\d+/"), secret_path(r"/interactions/\d+/"))


class DiscordAdapter:
    name = PLATFORM

    def __init__(self, core: Core, config: DiscordConfig, late_edits: LateEdits | None = None) -> None:
        """``late_edits``: where answers rate-limited past the ceiling are finished (tests pass one on virtual time)."""
        self._core = core
        self._config = config
        self._owner_ids: frozenset[int] = frozenset()
        self._closing = False
        self._served = False  # the gateway said READY once: from then on a refusal ends serving, not the start
        self._answering: set[asyncio.Task[object]] = set()
        # Discord limits writes per channel (5 per 5 s), not per message: every answer in a channel shares one budget.
        self._limits = PlatformLimits(config.pace, config.rate_limit_max_wait_s, late_edits)
        install_redaction("discord", SecretRedactingFilter([config.token], TOKEN_PATHS))
        self._client = build_client(config, intents=_intents(config), allowed_mentions=NO_MENTIONS)
        self._tree = app_commands.CommandTree(self._client)
        # Composition over subclassing: discord.py looks hooks and handlers up as attributes of the client.
        self._client.setup_hook = self._setup_hook  # type: ignore[method-assign]
        self._client.on_connect = self._on_connect  # type: ignore[attr-defined]
        self._client.on_message = self._on_message  # type: ignore[attr-defined]
        self._client.on_raw_message_delete = self._on_raw_message_delete  # type: ignore[attr-defined]
        self._client.on_raw_bulk_message_delete = self._on_raw_bulk_message_delete  # type: ignore[attr-defined]
        self._client.on_guild_channel_delete = self._on_guild_channel_delete  # type: ignore[attr-defined]
        self._client.on_raw_thread_delete = self._on_raw_thread_delete  # type: ignore[attr-defined]
        self._client.on_guild_remove = self._on_guild_remove  # type: ignore[attr-defined]
        for command in build_commands(self):
            self._tree.add_command(command)

    async def run(self) -> None:
        """Log in, connect, serve until `close`. Raises `PlatformStartError` when Discord cannot be used at all (not
        reachable, the token refused, the message content intent not enabled), and `CredentialsRevoked` when it
        refuses us while serving; each says what to do in one sentence. Dropped connections discord.py resumes."""
        with webhooks_at(self._config):  # the tasks discord.py starts from here on answer interactions there
            async with self._client:
                try:
                    # discord.py waits minutes on a server that accepts and never answers; a start does not.
                    await asyncio.wait_for(self._client.login(self._config.token), START_TIMEOUT_S)
                except discord.LoginFailure:
                    raise PlatformStartError(WRONG_TOKEN) from None
                except UNREACHABLE as e:  # connection refused, no such host, timed out
                    raise PlatformStartError(
                        f"cannot reach Discord at {self._config.api_url} ({_briefly(e)}): check the "
                        "network, and SCRATCHBOT_DISCORD_API_URL if you set it"
                    ) from None
                except Exception as e:  # something answered, but not as Discord's API does (a 404, HTML, ...)
                    raise PlatformStartError(
                        f"{self._config.api_url} does not answer as Discord's API does ({_briefly(e)}): check "
                        "SCRATCHBOT_DISCORD_API_URL"
                    ) from None
                try:
                    await self._client.connect()
                except discord.PrivilegedIntentsRequired:  # gateway close 4014, at the first IDENTIFY or a later one
                    raise self._refused(INTENT_NOT_ENABLED) from None
                except discord.ConnectionClosed as e:
                    if e.code != GATEWAY_AUTHENTICATION_FAILED:
                        raise
                    raise self._refused(WRONG_TOKEN) from None
                except Exception as e:
                    if self._served:
                        raise
                    raise PlatformStartError(  # REST answered, the gateway it named did not
                        f"cannot connect to Discord's gateway ({_briefly(e)}): check the network (a proxy must let "
                        "WebSocket connections to the gateway through), and SCRATCHBOT_DISCORD_API_URL if you set it"
                    ) from None

    def _refused(self, what_to_do: str) -> PlatformStartError | CredentialsRevoked:
        """Discord refused us for good: before we served anyone the service cannot start; after, Discord stops."""
        return CredentialsRevoked(what_to_do) if self._served else PlatformStartError(what_to_do)

    async def close(self) -> None:
        self._closing = True
        # Answers cut short unwind while the client can still edit: each shows what arrived, without the cursor.
        if late := await drain(self._answering, self._config.close_grace_s, unwind_s=CUT_SHORT_S):
            log.warning("%d Discord answers cut short at shutdown", late)
        await self._limits.close()
        await self._client.close()

    # -- startup -------------------------------------------------------------------------------------------------

    async def _setup_hook(self) -> None:
        app = await self._client.application_info()
        owners = {app.owner.id}
        if app.team is not None:  # read-only team members may look, not reload (as discord.py's own is_owner)
            roles = (discord.TeamMemberRole.admin, discord.TeamMemberRole.developer)
            owners |= {m.id for m in app.team.members if m.role in roles}
        self._owner_ids = frozenset(owners)
        if self._config.sync_commands:
            try:
                synced = await self._tree.sync()
            except REFUSED:  # the commands published last time keep working; chat needs none
                log.exception("could not publish the application commands")
            else:
                log.info("published %d application commands", len(synced))

    async def _on_connect(self) -> None:  # READY: the gateway took our IDENTIFY
        self._served = True

    # -- messages ------------------------------------------------------------------------------------------------

    async def _on_message(self, message: discord.Message) -> None:
        me = self._client.user
        if message.author.bot or me is None:
            return  # other bots (and our own replies) would answer each other forever
        is_dm = message.guild is None
        if not is_dm and me not in message.mentions:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # joins, pins, thread-created notices
        if self._closing:  # not answered here; say so rather than leave the question hanging
            with contextlib.suppress(*REFUSED):
                await message.reply(RESTARTING, allowed_mentions=NO_MENTIONS)
            return
        with self._answer_in_progress():  # from here on, before any await: `close` waits for this answer
            text = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
            command, args = parse_command(text)
            transcript = _reader(message.channel, before=message) if command == "summarize" else None
            channel = message.channel
            if message.guild is not None and isinstance(channel, discord.PartialMessageable):
                channel = await self._fetch_channel(channel.id) or channel  # an uncached thread: find its parent
            incoming = self._incoming(
                channel, message.guild, message.author, command, args, str(message.id), transcript
            )
            reply = self._reply(ChannelSink(message), str(message.channel.id))
            async with _typing(message.channel):
                await self._core.handle(incoming, reply)

    def _reply(self, sink: ChannelSink | InteractionSink, channel: str) -> SinkReply:
        limits = self._limits.channel(channel)
        return SinkReply(sink, limit=MESSAGE_LIMIT, interval_s=self._config.edit_interval_s, limits=limits)

    def _incoming(
        self,
        channel: object,
        guild: discord.Guild | None,
        author: discord.abc.User,
        command: str,
        text: str,
        message_id: str | None,
        transcript: TranscriptReader | None = None,
    ) -> Incoming:
        if guild is None:
            tenant, where, thread = dm_tenant(str(author.id)), str(getattr(channel, "id", "")), ""
        elif isinstance(channel, discord.Thread):
            tenant, where, thread = str(guild.id), str(channel.parent_id), str(channel.id)
        else:
            tenant, where, thread = str(guild.id), str(getattr(channel, "id", "")), ""
        return Incoming(
            platform=PLATFORM,
            tenant=tenant,
            channel=where,
            thread=thread,
            author_id=str(author.id),
            text=text,
            command=command,
            message_id=message_id,
            is_dm=guild is None,
            author_is_owner=author.id in self._owner_ids,
            transcript=transcript,
        )

    @contextlib.contextmanager
    def _answer_in_progress(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None  # discord.py runs every handler in its own task
        self._answering.add(task)
        try:
            yield
        finally:
            self._answering.discard(task)

    # -- what happened on Discord's side -------------------------------------------------------------------------

    async def _on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        await self._messages_deleted(event.channel_id, event.guild_id, [event.message_id])

    async def _on_raw_bulk_message_delete(self, event: discord.RawBulkMessageDeleteEvent) -> None:
        await self._messages_deleted(event.channel_id, event.guild_id, sorted(event.message_ids))

    async def _messages_deleted(self, channel_id: int, guild_id: int | None, message_ids: list[int]) -> None:
        """Raw events name the messages whether or not this client saw them: stored before a restart, too."""
        # An uncached thread or DM: ask which channel (or whose DM) it is.
        channel = self._client.get_channel(channel_id) or await self._fetch_channel(channel_id)
        if guild_id is not None:
            tenant = str(guild_id)
            where = channel.parent_id if isinstance(channel, discord.Thread) else channel_id
        elif isinstance(channel, discord.DMChannel) and channel.recipient is not None:
            tenant, where = dm_tenant(str(channel.recipient.id)), channel_id
        else:
            log.info("messages deleted in DM channel %s, which we cannot see", channel_id)
            return
        await self._core.messages_deleted(PLATFORM, tenant, str(where), [str(i) for i in message_ids])

    async def _on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        # discord.py has no raw CHANNEL_DELETE event, and needs none here: with the guilds intent every channel of
        # every guild is cached (GUILD_CREATE lists them all, and nothing evicts them), so each deletion arrives.
        if isinstance(channel, discord.CategoryChannel):
            return  # a category holds channels, never messages; its channels are deleted (or moved) on their own
        deleted = await self._core.channel_deleted(
            PLATFORM, str(channel.guild.id), str(channel.id), reason="channel deleted"
        )
        log.info("channel %s deleted: %d stored messages purged", channel.id, deleted)

    async def _on_raw_thread_delete(self, event: discord.RawThreadDeleteEvent) -> None:
        if self._client.get_channel(event.parent_id) is None:
            # The parent channel is gone: discord.py reports a deleted channel's cached threads as deleted too,
            # after the channel itself, whose purge took its threads along.
            return
        deleted = await self._core.channel_deleted(
            PLATFORM, str(event.guild_id), str(event.parent_id), str(event.thread_id), reason="thread deleted"
        )
        log.info("thread %s deleted: %d stored messages purged", event.thread_id, deleted)

    async def _fetch_channel(self, channel_id: int) -> object | None:
        try:
            return await self._client.fetch_channel(channel_id)
        except REFUSED as e:  # no access any more, Discord is down, or rate-limited: file it as best we can
            log.warning("could not look up Discord channel %s: %s", channel_id, e)
            return None

    async def _on_guild_remove(self, guild: discord.Guild) -> None:
        deleted = await self._core.tenant_removed(PLATFORM, str(guild.id), "guild removed")
        log.info("removed from guild %s: %d stored messages purged", guild.id, deleted)

    # -- slash commands and context menus ------------------------------------------------------------------------

    async def command(
        self,
        interaction: discord.Interaction,
        command: str,
        text: str = "",
        *,
        ephemeral: bool = False,
        transcript_of: discord.abc.Messageable | None = None,
        before: discord.Message | discord.Object | None = None,
    ) -> None:
        """Defer (Discord wants an answer within 3 s), then let the core answer into the deferred response."""
        if self._closing:
            with contextlib.suppress(*REFUSED):
                await interaction.response.send_message(RESTARTING, ephemeral=True)
            return
        with self._answer_in_progress():  # before the first await: a deferred command must not be left "thinking"
            try:
                await interaction.response.defer(thinking=True, ephemeral=ephemeral)
            except REFUSED as e:  # the 3 s passed (a slow event loop), Discord is down or rate-limits us
                log.warning("could not defer /%s: %s", command, e)
                return
            transcript = _reader(transcript_of, before=before) if transcript_of is not None else None
            incoming = self._incoming(
                interaction.channel, interaction.guild, interaction.user, command, text, None, transcript
            )
            # An interaction's response and follow-ups are webhook calls, limited per interaction, not per channel.
            reply = self._reply(InteractionSink(interaction, ephemeral), f"interaction {interaction.id}")
            await self._core.handle(incoming, reply)

    async def checkpoint_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice]:
        probe = self._incoming(interaction.channel, interaction.guild, interaction.user, "reload", "", None)
        if not self._core.is_admin(probe):
            return []  # nothing to pick for those who may not reload; the refusal itself comes from the core
        names = await asyncio.to_thread(self._core.checkpoint_names)
        matching = [n for n in names if current.lower() in n.lower()]
        return [app_commands.Choice(name=n[:100], value=n) for n in matching[:25]]  # Discord's limits


# -- helpers -------------------------------------------------------------------------------------------------------


def _intents(config: DiscordConfig) -> discord.Intents:
    """Only what the bot uses. Message content is privileged and not needed: Discord includes the content of
    messages that mention the bot, of DMs, and of a context menu's target message."""
    intents = discord.Intents.none()
    intents.guilds = True  # joins, removals, deleted channels and threads (purges); the channel and thread cache
    intents.guild_messages = True  # mentions in channels and threads, and their deletion
    intents.dm_messages = True  # direct messages and their deletion
    intents.message_content = config.message_content
    return intents


@contextlib.asynccontextmanager
async def _typing(channel: discord.abc.Messageable) -> AsyncIterator[None]:
    """The typing indicator while the model works; an answer must not fail because the indicator did."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(channel.typing())
        except REFUSED as e:
            log.info("no typing indicator: %s", e)
        yield


def _reader(channel: object, *, before: discord.Message | discord.Object | None = None) -> TranscriptReader:
    """Reads recent messages for a summary, oldest first; None (the core then uses its stored history) when the
    channel cannot be read or shows no text (without the message content intent, others' messages arrive empty)."""

    async def read(count: int) -> tuple[TranscriptLine, ...] | None:
        if not isinstance(channel, discord.abc.Messageable):
            return None
        try:
            messages = [m async for m in channel.history(limit=count, before=before)]
        except REFUSED as e:
            log.info("cannot read history for a summary (%s); using stored history", e)
            return None
        lines = (TranscriptLine(m.author.display_name, m.content) for m in reversed(messages) if m.content.strip())
        return tuple(lines) or None

    return read


def _briefly(error: BaseException) -> str:
    """An error as a few words for a one-line message: its type, and its first line if it has one."""
    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
