"""The plain, frozen values the Store takes and returns, and their construction from rows. Callers never see ORM
objects, so nothing lazy-loads later, outside the session, in the middle of a reply."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from storage.models import ID_LENGTH, AuditEntry, CheckpointLoad, Message, Role

log = logging.getLogger(__name__)

__all__ = [
    "DM_TENANT_PREFIX",
    "AddedMessage",
    "AuditRecord",
    "CheckpointLoadRecord",
    "ConversationKey",
    "Generation",
    "RetentionResult",
    "Role",
    "StoredMessage",
    "UnstorableTextError",
    "audit_record",
    "check_id",
    "check_sha256",
    "check_text",
    "checkpoint_load_record",
    "dm_channel",
    "dm_tenant",
    "message_record",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")

# Direct messages belong to the user, not to a guild or workspace. Keying them by this tenant keeps them apart from
# every guild's history and lets `forget_user` remove the whole conversation, the bot's replies included.
DM_TENANT_PREFIX = "dm:"


def dm_tenant(user_id: str) -> str:
    """The tenant under which to file a direct conversation with `user_id`."""
    return DM_TENANT_PREFIX + check_id("user_id", user_id)


def dm_channel(user_id: str) -> str:
    """The channel under which to file a direct conversation with `user_id` on a platform whose DMs belong to a
    tenant (a Slack DM lives in one workspace, so uninstalling the app there must remove it too). `forget_user`
    removes such a conversation whole, as it does one filed under `dm_tenant`. Platform channel ids never contain
    ":", so this cannot collide with a real channel."""
    return dm_tenant(user_id)


def check_id(name: str, value: str, *, allow_empty: bool = False) -> str:
    """`value` if it is usable as a platform identifier, else a ValueError that names the field."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > ID_LENGTH:
        raise ValueError(f"{name} is {len(value)} characters long; platform identifiers are at most {ID_LENGTH}")
    return value


class UnstorableTextError(ValueError):
    """A text no database can store exactly. `reason` says which character, in words a user understands."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"message text {reason} (at position {position}), which the database cannot store")
        self.reason = reason
        self.position = position


def check_text(text: str) -> str:
    """`text` if every backend can store it exactly; otherwise UnstorableTextError rather than a silently altered
    text."""
    if not isinstance(text, str):
        raise TypeError(f"message text must be a str, got {type(text).__name__}")
    if "\x00" in text:
        # PostgreSQL text cannot hold U+0000; refusing it everywhere keeps SQLite and PostgreSQL alike.
        raise UnstorableTextError("contains a NUL character (U+0000)", text.index("\x00"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        if 0xDC80 <= code <= 0xDCFF:  # how Python keeps a byte that was not UTF-8 (a terminal set to Latin-1)
            reason = f"contains a byte that is not UTF-8 (0x{code - 0xDC00:02X}); check your terminal's encoding"
        else:  # half of an emoji cut off, or a platform's bad escape
            reason = f"contains an invalid character (a lone surrogate, U+{code:04X})"
        raise UnstorableTextError(reason, e.start) from None
    return text


def check_sha256(digest: str) -> str:
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a SHA-256 digest (64 lowercase hex digits, as hashlib's hexdigest())")
    return digest


@dataclass(frozen=True)
class ConversationKey:
    """Where a conversation happens. `thread` is "" for the channel itself. For a DM, use `dm_tenant(user_id)`."""

    platform: str  # "discord", "slack", "console"
    tenant: str  # guild id / workspace (team) id, or dm_tenant(user)
    channel: str  # channel id (a DM channel's id for DMs)
    thread: str = ""  # thread id, "" when not in a thread

    def __post_init__(self) -> None:
        check_id("platform", self.platform)
        check_id("tenant", self.tenant)
        check_id("channel", self.channel)
        check_id("thread", self.thread, allow_empty=True)


@dataclass(frozen=True)
class Generation:
    """What produced an assistant turn: the checkpoint's file name and digest, and the sampling settings used."""

    checkpoint_name: str
    checkpoint_sha256: str  # lowercase hex
    sampling: Mapping[str, Any]  # e.g. {"temperature": 0.7, "top_k": 50, "max_new_tokens": 256, "seed": 1}

    def __post_init__(self) -> None:
        check_sha256(self.checkpoint_sha256)


@dataclass(frozen=True)
class StoredMessage:
    id: int  # increases with insertion; history is ordered by it
    conversation_id: int
    role: Role
    author_id: str
    text: str
    created_at: datetime  # aware, UTC
    platform_message_id: str | None
    generation: Generation | None  # assistant turns only


@dataclass(frozen=True)
class AddedMessage:
    message: StoredMessage  # on a duplicate: the row stored the first time, not the retry's copy
    duplicate: bool  # True when the platform message id was already stored in this conversation


@dataclass(frozen=True)
class RetentionResult:
    messages: int
    conversations: int
    events: int


@dataclass(frozen=True)
class CheckpointLoadRecord:
    id: int
    name: str
    sha256: str | None
    requested_by: str
    created_at: datetime
    succeeded: bool
    detail: str


@dataclass(frozen=True)
class AuditRecord:
    id: int
    created_at: datetime
    platform: str
    tenant: str
    actor_id: str
    action: str
    target: str
    detail: Mapping[str, Any]


def message_record(row: Message | Row[Any]) -> StoredMessage:
    """From an ORM object or a row of the messages table (the hot paths read rows)."""
    generation = None
    if row.checkpoint_name is not None and row.checkpoint_sha256 is not None:
        generation = Generation(row.checkpoint_name, row.checkpoint_sha256, row.sampling or {})
    return StoredMessage(
        id=row.id,
        conversation_id=row.conversation_id,
        role=row.role,
        author_id=row.author_id,
        text=row.text,
        created_at=row.created_at,
        platform_message_id=row.platform_message_id,
        generation=generation,
    )


def checkpoint_load_record(row: CheckpointLoad) -> CheckpointLoadRecord:
    return CheckpointLoadRecord(
        id=row.id,
        name=row.name,
        sha256=row.sha256,
        requested_by=row.requested_by,
        created_at=row.created_at,
        succeeded=row.succeeded,
        detail=row.detail,
    )


def audit_record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        created_at=row.created_at,
        platform=row.platform,
        tenant=row.tenant,
        actor_id=row.actor_id,
        action=row.action,
        target=row.target,
        detail=dict(row.detail),
    )
