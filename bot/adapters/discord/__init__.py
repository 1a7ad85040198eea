"""Discord: the only package that imports discord.py.

Turns mentions, DMs, slash commands and message context menus into `Incoming` for the core, and answers through
`StreamedMessages` (a reply edited about once a second, split at 2,000 characters). Nothing the bot sends can ping:
`allowed_mentions` is none on the client and on every call. Deleted messages (one by one or in bulk), channels and
threads, and guilds the bot leaves are purged from storage; messages and threads through raw gateway events, so
those this client never saw (before a restart) are covered too.

`adapter` (the adapter and its events), `commands` (slash commands, context menus), `reply` (the message sinks),
`client` (discord.py's client, talking to the configured Discord), `config`. The names below are the package's
face: the composition root and the tests import them from here.
"""

from bot.adapters.discord.adapter import RESTARTING, TOKEN_PATHS, DiscordAdapter
from bot.adapters.discord.config import DiscordConfig
from bot.adapters.discord.reply import MESSAGE_LIMIT

__all__ = ["MESSAGE_LIMIT", "RESTARTING", "TOKEN_PATHS", "DiscordAdapter", "DiscordConfig"]
