"""How answers reach Discord: as a chain of replies to a message, or in an interaction's deferred response and its
follow-ups. `bot.adapters.streaming` streams into either through the two `MessageSink`s here."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import discord

from bot.adapters.streaming import RateLimited
from bot.core.messages import ReplyRefused

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # Discord's limit on a message's content, in characters
NO_MENTIONS = discord.AllowedMentions.none()  # model output may contain @everyone or <@&role>: shown, never pinged
# What a Discord call raises when Discord says no. A 429 over the ceiling is `discord.RateLimited`, no HTTPException.
REFUSED = (discord.HTTPException, discord.RateLimited)
# How Discord refuses an interaction's response and follow-ups once its token has expired (15 minutes after the
# interaction): 401 Invalid Webhook Token, or 404 Unknown Webhook.
TOKEN_EXPIRED = frozenset({(401, 50027), (404, 10015)})


@contextlib.contextmanager
def _in_streaming_terms() -> Iterator[None]:
    """discord.py's errors as `bot.adapters.streaming` understands them: a rate limit over the ceiling (which
    discord.py would not wait out) is the caller's to wait, as `RateLimited`."""
    try:
        yield
    except discord.RateLimited as e:
        raise RateLimited(e.retry_after) from None


class ChannelSink:
    """Answers as replies: the first to the user's message, each later one to the one before, so a long answer
    reads as one chain even when others write in between. discord.py waits out 429s up to the configured ceiling
    itself; a longer one raises `RateLimited`."""

    def __init__(self, message: discord.Message) -> None:
        self._reply_to = message

    async def post(self, text: str) -> discord.Message:
        # fail_if_not_exists=False: if the question is deleted meanwhile, the answer still arrives.
        reference = self._reply_to.to_reference(fail_if_not_exists=False)
        with _in_streaming_terms():
            sent = await self._reply_to.channel.send(text, reference=reference, allowed_mentions=NO_MENTIONS)
        self._reply_to = sent
        return sent

    async def edit(self, handle: discord.Message, text: str) -> None:
        with _in_streaming_terms():
            await handle.edit(content=text, allowed_mentions=NO_MENTIONS)


class InteractionSink:
    """The deferred response ("thinking…") becomes the first message; more of a long answer follows up. Once Discord
    says the interaction's token has expired, every call raises `ReplyRefused` without asking Discord again."""

    def __init__(self, interaction: discord.Interaction, ephemeral: bool) -> None:
        self._interaction = interaction
        self._ephemeral = ephemeral
        self._original_used = False
        self._expired = False

    async def post(self, text: str) -> discord.WebhookMessage | None:
        if not self._original_used:
            with self._call():
                await self._interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            self._original_used = True  # only once it shows the text: after a 429 the retry edits it again
            return None  # None stands for the original response
        with self._call():
            return await self._interaction.followup.send(
                text, wait=True, ephemeral=self._ephemeral, allowed_mentions=NO_MENTIONS
            )

    async def edit(self, handle: discord.WebhookMessage | None, text: str) -> None:
        with self._call():
            if handle is None:
                await self._interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            else:
                await handle.edit(content=text, allowed_mentions=NO_MENTIONS)

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        if self._expired:
            raise ReplyRefused("the interaction has expired")
        try:
            with _in_streaming_terms():
                yield
        except discord.HTTPException as e:
            if (e.status, e.code) not in TOKEN_EXPIRED:
                raise
            self._expired = True
            name = self._interaction.command.name if self._interaction.command else "a command"
            log.warning("the answer to %r is dropped: its interaction expired before it was done (%s)", name, e)
            raise ReplyRefused("the interaction has expired") from None
