"""What every platform adapter speaks to the core: neutral frozen messages in, a small reply protocol out, and the
core's port (`Core`), the one thing an adapter holds of the core.

Adapters translate their SDK's events into `Incoming` and implement `Reply` over their own API (editing a message
as text streams, splitting at the platform's length limit); the core never sees an SDK object.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.core.commands import COMMANDS
from bot.inference.generator import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscriptLine:
    """One message of a channel, as an adapter read it for `summarize`."""

    author: str
    text: str


class ReadRefused(Exception):  # noqa: N818 (what happened, not an error of ours)
    """The platform would not let the bot read the conversation (no access, rate limited); the adapter has already
    told the user why, so there is nothing more to say."""


class ReplyRefused(Exception):  # noqa: N818 (what happened, not an error of ours)
    """The platform takes no more of this answer, for good (the interaction it answers has expired): the adapter has
    logged why, and no one could read a notice, so the core stops the answer without trying again or an error."""


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


class Core(Protocol):
    """The core as an adapter sees it (`bot.core.conversation.ConversationManager` is the one implementation)."""

    @property
    def model_info(self) -> ModelInfo:
        """The model answering now (a terminal's banner, a platform's status)."""

    async def handle(self, incoming: Incoming, reply: Reply) -> None:
        """Answer one message or command; never raises."""

    async def messages_deleted(self, platform: str, tenant: str, channel: str, message_ids: Sequence[str]) -> int:
        """The platform says messages were deleted (one, or a bulk deletion): delete the stored copies. Returns rows
        deleted."""

    async def channel_deleted(
        self, platform: str, tenant: str, channel: str, thread: str | None = None, *, reason: str
    ) -> int:
        """A channel (``thread`` None: with its threads and settings) or one thread of it was deleted on the
        platform: delete what is stored of it. Returns messages deleted."""

    async def tenant_removed(self, platform: str, tenant: str, reason: str) -> int:
        """The bot left a guild or workspace: delete everything stored for it. Returns messages deleted."""

    def is_admin(self, incoming: Incoming) -> bool:
        """Whether the sender may run admin commands (to hide admin choices, never to grant them)."""

    def checkpoint_names(self) -> list[str]:
        """Names `reload` accepts, newest first (for a platform's autocomplete)."""
