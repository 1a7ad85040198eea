"""How the Discord adapter is configured. Built from the service's settings by the composition root (`bot/app.py`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.adapters.pacing import DISCORD_PACE, Pace

log = logging.getLogger(__name__)

MIN_RATE_LIMIT_WAIT_S = 30.0  # discord.py raises any smaller `max_ratelimit_timeout` to this


@dataclass(frozen=True)
class DiscordConfig:
    token: str = field(repr=False)  # the bot token (developer portal -> Bot -> Reset Token); never logged or shown
    # Where Discord's REST API is (SCRATCHBOT_DISCORD_API_URL): Discord's own https://discord.com/api/v10, a REST
    # proxy in front of it, or a test's fake Discord. The gateway is the one this API names (GET /gateway/bot).
    api_url: str
    # The longest one call waits out a rate limit (SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S; discord.py's floor is 30 s). A
    # 429 asking for longer, on one route or Discord's global limit, fails the call with `RateLimited` at once.
    rate_limit_max_wait_s: float
    edit_interval_s: float = 1.0  # at most one edit of a streamed reply per this many seconds (Discord allows ~5/5 s)
    sync_commands: bool = True  # publish the slash commands at startup (a bulk overwrite: idempotent)
    message_content: bool = False  # privileged intent; only lets /summarize read messages that do not mention us
    close_grace_s: float = 30.0  # how long `close` lets answers in progress finish before disconnecting
    pace: Pace = DISCORD_PACE  # message writes per channel, shared by every answer there

    def __post_init__(self) -> None:
        if self.rate_limit_max_wait_s < MIN_RATE_LIMIT_WAIT_S:  # discord.py would wait longer on its own calls
            raise ValueError(
                f"the rate limit ceiling must be at least {MIN_RATE_LIMIT_WAIT_S:.0f} s (discord.py's smallest): "
                "set SCRATCHBOT_RATE_LIMIT_MAX_WAIT_S to 30 or more"
            )
