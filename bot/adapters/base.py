"""What every platform adapter speaks to the core: neutral frozen messages in, a small reply protocol out.

Adapters translate their SDK's events into `Incoming` and implement `Reply` over their own API (editing a message
as text streams, splitting at the platform's length limit); the core never sees an SDK object.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# Commands the core understands; platforms map their slash commands and shortcuts onto these.
COMMANDS = ("chat", "summarize", "translate", "model", "forget", "reload", "settings", "help")
SUMMARIZE_MAX = 500  # messages a summary may read; adapters fetch no more than this from a platform
QUOTES = {'"': '"', "“": "”"}  # phones type curly quotes
UNQUOTE = str.maketrans(dict.fromkeys('"“”', " "))


@dataclass(frozen=True)
class TranscriptLine:
    """One message of a channel, as an adapter fetched it for `summarize`."""

    author: str
    text: str


class ReadRefused(Exception):  # noqa: N818 (what happened, not an error of ours)
    """The platform would not let the bot read the conversation (no access, rate limited); the adapter has already
    told the user why, so there is nothing more to say."""


# Reads the conversation's newest ``count`` messages from the platform, oldest first, for `summarize`: None when the
# platform shows no text (the core then summarizes what it has stored), ReadRefused after telling the user. Called
# by the core only after it has checked the request (a redelivery, a bad count, the rate limit).
TranscriptReader = Callable[[int], Awaitable[tuple[TranscriptLine, ...] | None]]


@dataclass(frozen=True)
class Incoming:
    """A message or command addressed to the bot, stripped of everything platform-specific."""

    platform: str  # "discord", "slack", "console"
    tenant: str  # guild / workspace id; for a DM, storage.records.dm_tenant(author_id)
    channel: str
    author_id: str
    text: str = ""  # the message (chat) or the command's arguments
    command: str = "chat"  # one of COMMANDS
    thread: str = ""  # "" when not in a thread
    author_name: str = ""
    message_id: str | None = None  # the platform's id: a redelivered message is answered once
    event_id: str | None = None  # the platform's delivery id (Slack's event_id): a redelivered event is dropped
    is_dm: bool = False
    author_is_owner: bool = False  # the platform itself says this user owns the bot application
    transcript: TranscriptReader | None = None  # `summarize` reads the platform's conversation through it

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"unknown command {self.command!r}; known: {', '.join(COMMANDS)}")


class Reply(Protocol):
    """How the core answers one `Incoming`."""

    async def send(self, text: str) -> None:
        """Send a whole message (a command's result, an error)."""

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        """Show text as it arrives (edit a message, print to a terminal); return the text shown."""


def summarize_count(text: str) -> int | None:
    """The message count typed after ``summarize`` if it is a valid one (1 to SUMMARIZE_MAX), else None."""
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() and 1 <= int(stripped) <= SUMMARIZE_MAX else None


def translate_args(text: str) -> tuple[str, str] | None:
    """``<language> <text>`` -> (language, text), or None when either is missing. A language of several words is
    quoted (``"Brazilian Portuguese" Bom dia``); unquoted, the language is the first word."""
    stripped = text.strip()
    if stripped[:1] in QUOTES:
        language, closed, rest = stripped[1:].partition(QUOTES[stripped[0]])
        if not closed:
            return None
    else:
        language, *after = stripped.split(maxsplit=1) or [""]  # any whitespace ends it: "German\nGuten Morgen"
        rest = after[0] if after else ""
    language, rest = " ".join(language.split()), rest.strip()
    return (language, rest) if language and rest else None


def quote_language(language: str) -> str:
    """The ``translate_args`` form of a language picked in a platform's own form field."""
    words = " ".join(language.translate(UNQUOTE).split())
    return words if words and " " not in words else f'"{words}"'  # '""' (no language) gets the usage message


def parse_command(text: str) -> tuple[str, str]:
    """``/name args`` typed as text (console, a mention starting with a command) -> (command, args);
    anything else is a chat message."""
    stripped = text.strip()
    if stripped.startswith("/"):
        name, _, args = stripped[1:].partition(" ")
        if name.lower() in COMMANDS:
            return name.lower(), args.strip()
    return "chat", text


class PlatformAdapter(Protocol):
    """One chat platform's connection, started by the composition root beside the others."""

    name: str  # "discord", "slack"

    async def run(self) -> None:
        """Connect and serve until `close` is called; raise if the platform refuses us for good (a bad token)."""

    async def close(self) -> None:
        """Stop taking new messages, let answers in progress finish, disconnect. Safe to call more than once."""
