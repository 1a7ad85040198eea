"""The database schema as typed SQLAlchemy 2.0 models. Only `storage` sees these; callers get `storage.records`.

Changing a model means writing an Alembic revision under `storage/migrations/versions/`; the test
`test_models_match_head_migration` fails until the two agree.
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

# Platform identifiers (Discord snowflakes, Slack ids and timestamps) are far shorter; the bound keeps indexes compact
# and is checked in `storage.records` so an over-long id fails loudly on SQLite too, which does not enforce VARCHAR(n).
ID_LENGTH = 128

# Constraint names are part of the schema: Alembic needs stable names to alter or drop them later, and SQLite's batch
# mode cannot address an unnamed constraint at all.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Message ids outgrow 32 bits on a busy PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no timezone type: SQLAlchemy stores the wall-clock digits and hands back naive datetimes, while
    PostgreSQL returns aware ones. Normalising to UTC on the way in (naive UTC text on SQLite, so text comparison is
    time comparison) and tagging UTC on the way out makes both backends return the same value.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is refused, since guessing its zone would shift retention by hours."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no timezone; pass an aware datetime, e.g. in UTC")
    return moment.astimezone(UTC)


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}  # noqa: RUF012 (SQLAlchemy's own hook)


class Conversation(Base):
    """One place the bot talks: a channel, or a thread in it, of one tenant on one platform."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "tenant", "channel", "thread"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(ID_LENGTH))
    # Guild / workspace id, or `records.dm_tenant(user)` for a direct conversation (which `forget_user` then removes).
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    channel: Mapped[str] = mapped_column(String(ID_LENGTH))
    # "" for the channel itself, not NULL: NULLs never collide in a UNIQUE constraint, so two rows for the same
    # channel could be created by a race.
    thread: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime]


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # History reads walk this index backwards: newest N of one conversation without a sort.
        Index(None, "conversation_id", "id"),
        # Idempotency: a platform's retry of the same message lands on this constraint. NULL ids (turns that have
        # no platform message, e.g. from the console) never collide, which is what we want.
        UniqueConstraint("conversation_id", "platform_message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(
        Enum(
            Role,
            name="role",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda roles: [r.value for r in roles],
        )
    )
    author_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    platform_message_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Assistant turns only: which weights and which sampling settings produced the text, so an answer can be traced.
    checkpoint_name: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    sampling: Mapped[dict[str, Any] | None]


class ChannelSetting(Base):
    __tablename__ = "channel_settings"

    platform: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    channel: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    settings: Mapped[dict[str, Any]]
    updated_by: Mapped[str] = mapped_column(String(ID_LENGTH))
    updated_at: Mapped[datetime]


class CheckpointLoad(Base):
    __tablename__ = "checkpoint_loads"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # None when the file could not even be read, so there was nothing to hash.
    sha256: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime]
    succeeded: Mapped[bool]
    detail: Mapped[str] = mapped_column(Text)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "platform", "tenant", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    platform: Mapped[str] = mapped_column(String(ID_LENGTH))
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    actor_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]]


class ProcessedEvent(Base):
    """Platform event ids already handled, so Slack's and Discord's redeliveries are answered once, even when several
    bot processes share the database."""

    __tablename__ = "processed_events"

    platform: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(index=True)
