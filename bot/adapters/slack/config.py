"""How the Slack adapter is configured: tokens, transport, limits. Read from the service's settings in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from bot.adapters.pacing import DEFAULT_MAX_WAIT_S, SLACK_PACE, Pace
from bot.adapters.slack.text import MESSAGE_LIMIT
from bot.settings import SLACK_API_URL, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackConfig:
    bot_token: str  # xoxb-…: the bot user's Web API token
    app_token: str | None = None  # xapp-… with connections:write: Socket Mode
    signing_secret: str | None = None  # HTTP mode: proves a request came from Slack
    mode: Literal["socket", "http"] | None = None  # None: Socket Mode when app_token is set, else HTTP mode
    http_host: str = "127.0.0.1"  # HTTP mode: listen here; put a TLS proxy / load balancer in front
    http_port: int = 3000  # HTTP mode; 0 picks a free port (tests read `http_port` back)
    http_path: str = "/slack/events"  # the Request URL's path in the app manifest (events, commands, shortcuts)
    api_url: str = SLACK_API_URL  # Web API base URL, ending in "/" (Settings sees to it); tests use a fake Slack's
    edit_interval_s: float = 1.0  # at most one chat.update per message this often (Slack allows about one a second)
    message_limit: int = MESSAGE_LIMIT  # characters per message as posted (escaped); longer answers are split
    translate_language: str = "English"  # what the "Translate message" shortcut translates into
    ping_interval_s: float = 10.0  # Socket Mode keepalive; a silent connection is replaced after ~4 of these
    close_grace_s: float = 20.0  # on close, answers in progress get this long to finish, then are cancelled
    rate_limit_max_wait_s: float = DEFAULT_MAX_WAIT_S  # a longer Retry-After is not waited out by the answer
    pace: Pace = SLACK_PACE  # message writes per channel, shared by every answer there (tests speed it up)

    def __post_init__(self) -> None:
        if not self.bot_token:
            raise ValueError("Slack needs a bot token (xoxb-…): set SCRATCHBOT_SLACK_BOT_TOKEN")
        if self.transport == "socket" and not self.app_token:
            raise ValueError("Slack Socket Mode needs an app-level token (xapp-…): set SCRATCHBOT_SLACK_APP_TOKEN")
        if self.transport == "http" and not self.signing_secret:
            raise ValueError("Slack HTTP mode needs the signing secret: set SCRATCHBOT_SLACK_SIGNING_SECRET")

    @property
    def transport(self) -> Literal["socket", "http"]:
        return self.mode or ("socket" if self.app_token else "http")


def slack_config(settings: Settings) -> SlackConfig:
    """The service's Slack configuration; the tokens leave their SecretStr only here."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    return SlackConfig(
        bot_token=secret(settings.slack_bot_token) or "",
        app_token=secret(settings.slack_app_token),
        signing_secret=secret(settings.slack_signing_secret),
        mode=settings.slack_mode,
        http_host=settings.slack_http_host,
        http_port=settings.slack_http_port,
        api_url=settings.slack_api_url,
        close_grace_s=settings.shutdown_grace_s,
        rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
    )
