"""The slash commands and message context menus, as thin calls into the adapter's `command`."""

from __future__ import annotations

import logging
from typing import Protocol

import discord
from discord import app_commands

from bot.core.commands import SUMMARIZE_MAX, quote_language

log = logging.getLogger(__name__)


class CommandRunner(Protocol):
    """What the commands need of the adapter (a protocol, so this module need not import it)."""

    async def command(
        self,
        interaction: discord.Interaction,
        command: str,
        text: str = "",
        *,
        ephemeral: bool = False,
        transcript_of: discord.abc.Messageable | None = None,
        before: discord.Message | discord.Object | None = None,
    ) -> None: ...

    async def checkpoint_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]: ...


def build_commands(adapter: CommandRunner) -> list[app_commands.Command | app_commands.ContextMenu]:
    """The slash commands and context menus, each deferring to ``adapter.command``."""

    @app_commands.command(name="summarize", description="Summarize this channel's or thread's recent messages")
    @app_commands.describe(count=f"How many recent messages to read (1-{SUMMARIZE_MAX})")
    async def summarize(
        interaction: discord.Interaction, count: app_commands.Range[int, 1, SUMMARIZE_MAX] | None = None
    ):
        await adapter.command(interaction, "summarize", str(count or ""), transcript_of=interaction.channel)

    @app_commands.command(name="translate", description="Translate text into another language")
    @app_commands.describe(language="Into which language, e.g. German", text="The text to translate")
    async def translate(interaction: discord.Interaction, language: str, text: str):
        await adapter.command(interaction, "translate", f"{quote_language(language)} {text}")

    @app_commands.command(name="model", description="Which model answers, and how busy it is")
    async def model(interaction: discord.Interaction):
        await adapter.command(interaction, "model", ephemeral=True)

    @app_commands.command(name="forget", description="Delete everything the bot stored from you")
    async def forget(interaction: discord.Interaction):
        await adapter.command(interaction, "forget", ephemeral=True)

    @app_commands.command(name="reload", description="Admins: switch the bot to another checkpoint")
    @app_commands.describe(name="Checkpoint file name; the newest when left out")
    async def reload(interaction: discord.Interaction, name: str | None = None):
        await adapter.command(interaction, "reload", name or "", ephemeral=True)

    @reload.autocomplete("name")
    async def reload_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await adapter.checkpoint_choices(interaction, current)

    async def summarize_thread(interaction: discord.Interaction, message: discord.Message):
        # The thread the message is in or started; otherwise the channel up to and including the message.
        if isinstance(message.channel, discord.Thread) or message.thread is None:
            where, before = message.channel, _after(message)
        else:
            where, before = message.thread, None
        await adapter.command(interaction, "summarize", transcript_of=where, before=before)

    async def translate_message(interaction: discord.Interaction, message: discord.Message):
        # Into the language of the user's own Discord client: the one they are reading in.
        await adapter.command(interaction, "translate", f"{_language(interaction.locale)} {message.content}")

    return [
        summarize,
        translate,
        model,
        forget,
        reload,
        app_commands.ContextMenu(name="Summarize thread", callback=summarize_thread),
        app_commands.ContextMenu(name="Translate message", callback=translate_message),
    ]


def _after(message: discord.Message) -> discord.Object:  # a `before` bound that includes the message itself
    return discord.Object(id=message.id + 1)


def _language(locale: discord.Locale) -> str:
    """'german' -> German, 'brazil_portuguese' -> Portuguese; Discord names every locale after its language."""
    return locale.name.rsplit("_", 1)[-1].title() if isinstance(locale, discord.Locale) else "English"
