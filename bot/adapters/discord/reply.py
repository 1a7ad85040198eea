"""How answers reach Discord: as a chain of replies to a message, or in an interaction's deferred response and its
follow-ups. `bot.adapters.streaming` streams into either through the two `MessageSink`s here."""

from __future__ import annotations

import logging

import discord

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # Discord's limit on a message's content, in characters
NO_MENTIONS = discord.AllowedMentions.none()  # model output may contain @everyone or <@&role>: shown, never pinged


class ChannelSink:
    """Answers as replies: the first to the user's message, each later one to the one before, so a long answer
    reads as one chain even when others write in between. discord.py waits out 429s itself (`retry_after`)."""

    def __init__(self, message: discord.Message) -> None:
        self._reply_to = message

    async def post(self, text: str) -> discord.Message:
        # fail_if_not_exists=False: if the question is deleted meanwhile, the answer still arrives.
        reference = self._reply_to.to_reference(fail_if_not_exists=False)
        sent = await self._reply_to.channel.send(text, reference=reference, allowed_mentions=NO_MENTIONS)
        self._reply_to = sent
        return sent

    async def edit(self, handle: discord.Message, text: str) -> None:
        await handle.edit(content=text, allowed_mentions=NO_MENTIONS)


class InteractionSink:
    """The deferred response ("thinking…") becomes the first message; more of a long answer follows up."""

    def __init__(self, interaction: discord.Interaction, ephemeral: bool) -> None:
        self._interaction = interaction
        self._ephemeral = ephemeral
        self._original_used = False

    async def post(self, text: str) -> discord.WebhookMessage | None:
        if not self._original_used:
            self._original_used = True
            await self._interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            return None  # None stands for the original response
        return await self._interaction.followup.send(
            text, wait=True, ephemeral=self._ephemeral, allowed_mentions=NO_MENTIONS
        )

    async def edit(self, handle: discord.WebhookMessage | None, text: str) -> None:
        if handle is None:
            await self._interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
        else:
            await handle.edit(content=text, allowed_mentions=NO_MENTIONS)
