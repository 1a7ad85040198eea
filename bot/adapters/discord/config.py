"""How the Discord adapter is configured. Built from the service's settings by the composition root (`bot/app.py`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscordConfig:
    token: str = field(repr=False)  # the bot token (developer portal -> Bot -> Reset Token); never logged or shown
    # Where Discord's REST API is (SCRATCHBOT_DISCORD_API_URL): Discord's own https://discord.com/api/v10, a REST
    # proxy in front of it, or a test's fake Discord. The gateway is the one this API names (GET /gateway/bot).
    api_url: str
    edit_interval_s: float = 1.0  # at most one edit of a streamed reply per this many seconds (Discord allows ~5/5 s)
    sync_commands: bool = True  # publish the slash commands at startup (a bulk overwrite: idempotent)
    message_content: bool = False  # privileged intent; only lets /summarize read messages that do not mention us
    close_grace_s: float = 30.0  # how long `close` lets answers in progress finish before disconnecting
