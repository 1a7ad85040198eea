"""Settings: the only reader of the environment and of ``.env``, for every command (`run`, `generate`, `evaluate`,
`finetune`, `db upgrade`, ...); a command-line flag overrides the setting it names.

Every setting is ``SCRATCHBOT_<NAME>`` in the environment or in ``.env`` (see ``.env.example``); an empty value
(``SCRATCHBOT_TOP_K=``) means unset. Secrets are `SecretStr`, so they never appear in ``repr``, logs or tracebacks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.core.commands import SUMMARIZE_MAX
from storage.db import DatabaseTimeouts, sqlite_url

log = logging.getLogger(__name__)

CommaList = Annotated[list[str], NoDecode]  # "a,b,c" in the environment, not JSON
VOCAB_SIZE = 50257  # GPT-2's: a top-k above it keeps every token
SLACK_ADMIN = re.compile(r"[A-Z0-9]+:[A-Z0-9]+")
SLACK_API_URL = "https://slack.com/api/"  # Slack's Web API; the Socket Mode URL is asked of it too


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad one, what is wrong, and where it comes from."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCRATCHBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- the model
    checkpoint: Path | None = None  # checkpoint to serve; unset: the newest in checkpoints_dir, else the bundled demo
    checkpoints_dir: Path = Path("data/checkpoints")  # where `reload NAME` looks; names never leave this directory
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")  # cpu, cuda, cuda:N, mps
    precision: Literal["fp32", "bf16", "int8"] = "int8"  # int8 weight-only is the fastest on a CPU
    max_batch: int = Field(8, ge=1, le=64)  # requests decoded together in one forward pass
    queue_size: int = Field(64, ge=1, le=100_000)  # requests waiting beyond the batch; more are told the bot is busy
    # Of those (max_batch + queue_size), at most this many from one guild or workspace; unset: half. A flood from one
    # server then delays only that server, and its questions wait their turn behind other servers' (fair sharing).
    tenant_max_active: int | None = Field(None, ge=1, le=100_000)
    request_timeout_s: float = Field(120.0, gt=0, le=3600, allow_inf_nan=False)  # a generation running longer stops

    # --- sampling defaults (channels may override them with `settings`)
    max_new_tokens: int = Field(256, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False)  # 0 = greedy, as chapter 7 evaluates
    top_k: int | None = Field(None, ge=1, le=VOCAB_SIZE)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)

    # --- conversations
    history_messages: int = Field(20, ge=0, le=200)  # stored messages read back for a prompt
    summarize_default: int = Field(50, ge=1, le=SUMMARIZE_MAX)  # messages `summarize` reads when no count is given
    rate_limit_per_minute: int = Field(10, ge=1)  # messages one user may send per minute
    # Stored messages older than this many days are deleted (checked every 6 hours); 0 keeps them.
    retention_days: int = Field(30, ge=0, le=36500)
    watch_checkpoints: bool = False  # reload when a new file appears in checkpoints_dir and passes the checks
    watch_interval_s: float = Field(30.0, gt=0, le=86400, allow_inf_nan=False)

    # --- storage
    data_dir: Path = Path("data")
    database_url: str | None = None  # unset: SQLite file data_dir/scratchbot.db; PostgreSQL: postgresql+asyncpg://...
    # PostgreSQL: opening a connection, or waiting for one. Below half a second a healthy server times out too.
    database_connect_timeout_s: float = Field(5.0, ge=0.5, le=3600, allow_inf_nan=False)
    # PostgreSQL: one statement; SQLite: how long a write waits for another's lock (the busy timeout).
    database_statement_timeout_s: float = Field(10.0, ge=0.5, le=3600, allow_inf_nan=False)

    # --- who may run admin commands (reload, settings): ids per platform, comma-separated
    discord_admin_ids: CommaList = []
    slack_admin_ids: CommaList = []  # "TEAM:USER" pairs

    # --- platforms: an adapter starts when its token is set; with none, `scratchbot run` opens the console
    discord_token: SecretStr | None = None
    discord_message_content: bool = False  # privileged intent: lets /summarize read messages that do not mention us
    # Discord's REST API, or a REST proxy in front of it; the gateway is the one this API names (GET /gateway/bot)
    discord_api_url: str = "https://discord.com/api/v10"
    # The longest one call to Discord waits out a rate limit (429); one asking for longer fails that call at once
    # instead of stalling the bot. At least 30: discord.py itself waits out anything shorter.
    rate_limit_max_wait_s: float = Field(30.0, ge=30, le=3600, allow_inf_nan=False)
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None  # Socket Mode
    slack_signing_secret: SecretStr | None = None  # HTTP mode
    slack_mode: Literal["socket", "http"] | None = None  # unset: Socket Mode when the app token is set, else HTTP
    slack_http_host: str = "127.0.0.1"  # HTTP mode: listen address (0.0.0.0 in a container behind a TLS proxy)
    slack_http_port: int = Field(3000, ge=0, le=65535)  # HTTP mode: where the Request URL's proxy forwards to
    slack_api_url: str = SLACK_API_URL  # where the Web API is reached: an egress proxy, or a test's fake Slack

    # --- scratchbot evaluate: bearer token for the judge model's endpoint (a key on the command line would land in
    # the shell history)
    judge_api_key: SecretStr | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # any case: "debug" works too
    shutdown_grace_s: float = Field(20.0, ge=0, le=3600, allow_inf_nan=False)  # generations may finish this long

    @field_validator("discord_admin_ids", "slack_admin_ids", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("discord_admin_ids")
    @classmethod
    def _discord_ids(cls, ids: list[str]) -> list[str]:
        for user in ids:
            if not user.isdigit():
                raise ValueError(f"{user!r} is not a Discord user id; copy the number from the user's profile")
        return ids

    @field_validator("slack_admin_ids")
    @classmethod
    def _slack_ids(cls, ids: list[str]) -> list[str]:
        for pair in ids:
            if not SLACK_ADMIN.fullmatch(pair):
                raise ValueError(f"{pair!r} is not TEAM:USER, e.g. T0123ABC:U0456DEF (workspace id, then member id)")
        return ids

    @field_validator("discord_api_url")
    @classmethod
    def _discord_api_url(cls, url: str) -> str:
        return _base_url(url, "Discord's own, https://discord.com/api/v10").rstrip("/")

    @field_validator("slack_api_url")
    @classmethod
    def _slack_api_url(cls, url: str) -> str:
        # slack_sdk joins method names onto it as a relative URL: without the slash ".../api" would lose "api".
        return _base_url(url, f"Slack's own, {SLACK_API_URL}").rstrip("/") + "/"

    @field_validator("discord_token", "slack_bot_token", "slack_app_token", "slack_signing_secret")
    @classmethod
    def _a_credential(cls, value: SecretStr | None) -> SecretStr | None:
        # A token pasted with a space or a line break cannot work, and every log line would be redacted to pieces
        # wherever that character occurs.
        secret = value.get_secret_value() if value is not None else ""
        if not secret.isprintable() or " " in secret:
            raise ValueError("contains spaces or control characters, which no token has; paste it again")
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_folder(cls, path: Path) -> Path:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; the data directory must be a folder (it is created if missing)")
        return path

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _a_real_share(self) -> Settings:
        accepted = self.max_batch + self.queue_size
        if self.tenant_max_active is not None and self.tenant_max_active > accepted:
            raise ValueError(
                f"SCRATCHBOT_TENANT_MAX_ACTIVE={self.tenant_max_active} is more than the bot accepts at once "
                f"(SCRATCHBOT_MAX_BATCH + SCRATCHBOT_QUEUE_SIZE = {accepted}), which would switch fair sharing off; "
                f"set at most {accepted}"
            )
        return self

    @model_validator(mode="after")
    def _slack_complete(self) -> Settings:
        # Half a Slack configuration would otherwise start the terminal chat, or fail after the model has loaded.
        given = [name for name in ("slack_app_token", "slack_signing_secret", "slack_mode") if getattr(self, name)]
        if given and not self.slack_bot_token:
            raise ValueError(f"{_env(given[0])} is set but SCRATCHBOT_SLACK_BOT_TOKEN (xoxb-...) is not; set it too")
        if not self.slack_bot_token:
            return self
        transport = self.slack_mode or ("socket" if self.slack_app_token else "http")
        if transport == "socket" and not self.slack_app_token:
            raise ValueError("Slack Socket Mode needs SCRATCHBOT_SLACK_APP_TOKEN (xapp-...) as well as the bot token")
        if transport == "http" and not self.slack_signing_secret:
            raise ValueError(
                "Slack needs SCRATCHBOT_SLACK_APP_TOKEN (Socket Mode) or SCRATCHBOT_SLACK_SIGNING_SECRET (HTTP mode) "
                "as well as the bot token"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return sqlite_url(self.data_dir / "scratchbot.db")

    @property
    def tenant_share(self) -> int:
        """Requests one tenant may have accepted at once: the setting, else half of what the bot accepts."""
        return self.tenant_max_active or max(1, (self.max_batch + self.queue_size) // 2)

    @property
    def database_timeouts(self) -> DatabaseTimeouts:
        return DatabaseTimeouts(self.database_connect_timeout_s, self.database_statement_timeout_s)

    @property
    def console_log(self) -> Path:
        """Where the terminal chat writes its log (standard error would interleave with the answers)."""
        return self.data_dir / "scratchbot.log"

    def is_set(self, name: str) -> bool:
        """Whether the environment or .env gave this setting, rather than its default taking effect."""
        return name in self.model_fields_set

    @property
    def platforms(self) -> list[str]:
        """Platforms whose credentials are configured (a half-configured Slack is refused when settings load)."""
        found = []
        if self.discord_token:
            found.append("discord")
        if self.slack_bot_token:
            found.append("slack")
        return found


def load_settings() -> Settings:
    """The settings of this run, or SettingsError naming every variable that is wrong."""
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(_problem(err["loc"], err["msg"]) for err in e.errors())
        raise SettingsError(f"invalid settings (environment or .env): {problems}") from None


def _base_url(url: str, example: str) -> str:
    """``url`` if a platform's API can live there: http(s), a host, a valid port if any, no credentials, query,
    fragment or whitespace (the clients send their own Authorization; a password in the URL would be logged)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is no number, or out of range; an unclosed IPv6 bracket
        port_ok = False
    plain = not (parts.query or parts.fragment or "?" in url or "#" in url or any(c.isspace() for c in url))
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or not plain or "@" in parts.netloc:
        raise ValueError(f"{url!r} is not an API base URL like {example} (http or https, a host, no credentials)")
    return url


def _env(name: str) -> str:
    return f"SCRATCHBOT_{name.upper()}"


def _problem(location: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    if not location:  # a rule across several settings names them itself
        return message
    return f"{_env(str(location[0]))}: {message}"
