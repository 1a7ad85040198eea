"""`Store`: the one storage API the rest of scratchbot uses. Every method is one transaction and returns plain values.

Writes that may race (a platform retrying an event, two bot processes, concurrent messages in a new channel) are made
idempotent with INSERT ... ON CONFLICT DO NOTHING, which SQLite and PostgreSQL both speak, instead of catching
integrity errors: a failed statement would abort the whole PostgreSQL transaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, false, or_, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.db import (
    DEFAULT_DATABASE_URL,
    DEFAULT_TIMEOUTS,
    DatabaseTimeouts,
    create_engine,
    single_statement_reads,
    unavailable_as_error,
)
from storage.migrate import upgrade_database
from storage.models import (
    AuditEntry,
    ChannelSetting,
    CheckpointLoad,
    Conversation,
    Message,
    ProcessedEvent,
    Role,
    as_utc,
    utc_now,
)
from storage.records import (
    AddedMessage,
    AuditRecord,
    CheckpointLoadRecord,
    ConversationKey,
    Generation,
    RetentionResult,
    StoredMessage,
    audit_record,
    check_id,
    check_sha256,
    check_text,
    checkpoint_load_record,
    dm_channel,
    dm_tenant,
    message_record,
)
from storage.statements import (
    CONVERSATIONS,
    FIND_CONVERSATION,
    FIND_MESSAGE,
    FIND_STORED,
    HISTORY_NEWEST_FIRST,
    INSERTS,
    MESSAGES,
    delete_conversation_rows,
    delete_rows,
    for_audit,
)

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_store(
    url: str | URL = DEFAULT_DATABASE_URL, timeouts: DatabaseTimeouts = DEFAULT_TIMEOUTS
) -> AsyncIterator[Store]:
    """The start-up path: connect, bring the schema to head (or refuse a newer one), and close the pools at exit."""
    engine = create_engine(url, timeouts=timeouts)
    maintenance = create_engine(url, timeouts=timeouts.for_maintenance())
    try:
        await upgrade_database(maintenance)
        yield Store(engine, maintenance)
    finally:
        await engine.dispose()
        await maintenance.dispose()


class Store:
    def __init__(self, engine: AsyncEngine, maintenance: AsyncEngine | None = None) -> None:
        """``maintenance``: the same database under longer timeouts, for retention and purges (default: ``engine``)."""
        self._insert = INSERTS[engine.dialect.name]
        self._create_conversation = self._insert(CONVERSATIONS).on_conflict_do_nothing()
        self._add_message = self._insert(MESSAGES).on_conflict_do_nothing().returning(*MESSAGES.c)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(single_statement_reads(engine), expire_on_commit=False)
        self._maintenance_sessions = async_sessionmaker(maintenance or engine, expire_on_commit=False)

    # -- conversations and messages ------------------------------------------------------------------------------

    async def add_message(
        self,
        key: ConversationKey,
        *,
        role: Role | str,
        author_id: str,
        text: str,
        platform_message_id: str | None = None,
        generation: Generation | None = None,
        created_at: datetime | None = None,
    ) -> AddedMessage:
        """Store one turn, creating the conversation if needed. A turn whose `platform_message_id` is already stored
        in this conversation is not stored again: the result says `duplicate` and carries the first copy."""
        role = Role(role)
        if role is Role.USER and generation is not None:
            raise ValueError("a user turn has no generation settings; pass `generation` for assistant turns only")
        values: dict[str, Any] = {
            "role": role,
            "author_id": check_id("author_id", author_id),
            "text": check_text(text),
            "created_at": as_utc(created_at) if created_at is not None else utc_now(),
            "platform_message_id": (
                check_id("platform_message_id", platform_message_id) if platform_message_id is not None else None
            ),
            "checkpoint_name": generation.checkpoint_name if generation else None,
            "checkpoint_sha256": generation.checkpoint_sha256 if generation else None,
            "sampling": dict(generation.sampling) if generation else None,
        }
        async with self._write() as session:
            conversation_id, _ = await self._conversation(session, key)
            row = {**values, "conversation_id": conversation_id}
            inserted = (await session.execute(self._add_message, row)).one_or_none()
            if inserted is not None:
                return AddedMessage(message=message_record(inserted), duplicate=False)
            first = (await session.execute(FIND_MESSAGE, row)).one()  # ON CONFLICT means it exists
        log.debug("duplicate message %s in conversation %d ignored", platform_message_id, first.conversation_id)
        return AddedMessage(message=message_record(first), duplicate=True)

    async def is_stored(self, key: ConversationKey, platform_message_id: str) -> bool:
        """Whether the platform's message is stored in the conversation already (a redelivery)."""
        async with self._read() as session:
            found = await session.execute(FIND_STORED, {**asdict(key), "platform_message_id": platform_message_id})
            return found.first() is not None

    async def recent_history(self, key: ConversationKey, limit: int = 20) -> list[StoredMessage]:
        """The newest `limit` turns of the conversation, oldest first (prompt order); [] for an unknown one."""
        if limit < 1:
            raise ValueError(f"history limit must be at least 1, got {limit}")
        async with self._read() as session:
            rows = (await session.execute(HISTORY_NEWEST_FIRST, {**asdict(key), "limit": limit})).all()
        return [message_record(row) for row in reversed(rows)]

    async def delete_messages(
        self, *, platform: str, tenant: str, channel: str, platform_message_ids: Sequence[str]
    ) -> int:
        """Delete messages the platform reports deleted (one, or a moderator's bulk deletion), in any thread of the
        channel; returns how many rows went."""
        ids = [check_id("platform_message_id", m) for m in platform_message_ids]
        if not ids:
            return 0
        in_channel = select(Conversation.id).where(
            Conversation.platform == platform, Conversation.tenant == tenant, Conversation.channel == channel
        )
        async with self._write() as session:
            return await delete_rows(
                session,
                delete(Message).where(Message.conversation_id.in_(in_channel), Message.platform_message_id.in_(ids)),
            )

    async def purge_channel(self, platform: str, tenant: str, channel: str, thread: str | None = None) -> int:
        """The platform deleted a channel (``thread`` None: with all its threads and its channel settings) or one
        thread: delete its conversations and their messages. Returns the number of messages deleted."""
        check_id("tenant", tenant)
        check_id("channel", channel)

        def where(row: type[Conversation] | type[ChannelSetting]) -> ColumnElement[bool]:
            here = (row.tenant == tenant) & (row.channel == channel)
            if thread is None:
                return here
            # One thread: its conversation only. Settings belong to the channel, which is still there.
            return here & (Conversation.thread == thread) if row is Conversation else false()

        in_scope = select(Conversation.id).where(Conversation.platform == platform, where(Conversation))
        async with self._maintain() as session:
            deleted = await delete_rows(session, delete(Message).where(Message.conversation_id.in_(in_scope)))
            await delete_conversation_rows(session, platform, where)
        log.info("purged %s %s on %s: %d messages deleted", "thread" if thread else "channel", thread or channel,
                 platform, deleted)  # fmt: skip
        return deleted

    # -- privacy and retention -----------------------------------------------------------------------------------

    async def forget_user(self, platform: str, user_id: str) -> int:
        """Delete everything the user wrote on `platform`, in every tenant, and their direct conversations whole
        (the bot's replies there too). Returns the number of messages deleted. Admin records (the audit log, checkpoint
        loads, who last changed a channel's settings) are kept: admins' actions must stay accountable."""
        dms_tenant, dms_channel = dm_tenant(user_id), dm_channel(user_id)

        def is_dm(row: type[Conversation] | type[ChannelSetting]) -> ColumnElement[bool]:
            # A DM is filed under its own tenant (Discord) or under a DM channel inside a workspace (Slack).
            return or_(row.tenant == dms_tenant, row.channel == dms_channel)

        on_platform = select(Conversation.id).where(Conversation.platform == platform)
        dms = select(Conversation.id).where(Conversation.platform == platform, is_dm(Conversation))
        async with self._write() as session:
            deleted = await delete_rows(session, delete(Message).where(Message.conversation_id.in_(dms)))
            deleted += await delete_rows(
                session,
                delete(Message).where(Message.author_id == user_id, Message.conversation_id.in_(on_platform)),
            )
            await delete_conversation_rows(session, platform, is_dm)
        # The user's id stays out of the log on purpose: the log is data too.
        log.info("forgot a %s user: %d messages deleted", platform, deleted)
        return deleted

    async def purge_tenant(self, platform: str, tenant: str) -> int:
        """Delete a tenant's conversations, messages and channel settings (guild left, app uninstalled); returns the
        number of messages deleted. Direct conversations are separate tenants and are not touched."""
        check_id("tenant", tenant)
        in_tenant = select(Conversation.id).where(Conversation.platform == platform, Conversation.tenant == tenant)
        async with self._maintain() as session:
            deleted = await delete_rows(session, delete(Message).where(Message.conversation_id.in_(in_tenant)))
            await delete_conversation_rows(session, platform, lambda row: row.tenant == tenant)
        log.info("purged tenant %s on %s: %d messages deleted", tenant, platform, deleted)
        return deleted

    async def delete_older_than(self, cutoff: datetime) -> RetentionResult:
        """Retention: delete messages and processed-event ids from before `cutoff`, and conversations left empty
        that were created before it. Running it again with the same cutoff deletes nothing more."""
        cutoff = as_utc(cutoff)
        has_messages = exists().where(Message.conversation_id == Conversation.id)
        async with self._maintain() as session:
            result = RetentionResult(
                messages=await delete_rows(session, delete(Message).where(Message.created_at < cutoff)),
                conversations=await delete_rows(
                    session, delete(Conversation).where(Conversation.created_at < cutoff, ~has_messages)
                ),
                events=await delete_rows(session, delete(ProcessedEvent).where(ProcessedEvent.processed_at < cutoff)),
            )
        log.info("retention before %s deleted %s", cutoff.isoformat(), result)
        return result

    # -- channel settings ----------------------------------------------------------------------------------------

    async def get_channel_settings(self, *, platform: str, tenant: str, channel: str) -> dict[str, Any]:
        """The channel's settings; {} when none were ever set."""
        async with self._read() as session:
            row = await session.get(ChannelSetting, (platform, tenant, channel))
            return dict(row.settings) if row is not None else {}

    async def update_channel_settings(
        self, *, platform: str, tenant: str, channel: str, changes: Mapping[str, Any], updated_by: str
    ) -> dict[str, Any]:
        """Merge `changes` into the channel's settings (a value of None removes that key) and return the result.
        Concurrent updates of different keys both survive: the row is locked while it is merged."""
        pk = {"platform": check_id("platform", platform), "tenant": check_id("tenant", tenant)}
        pk["channel"] = check_id("channel", channel)
        row_values = {**pk, "updated_by": check_id("updated_by", updated_by), "updated_at": utc_now()}
        async with self._write() as session:
            # Create the row if missing, then lock it: without the lock two PostgreSQL transactions would both merge
            # into the same old value and the later commit would drop the other's change.
            await session.execute(
                self._insert(ChannelSetting).values(**row_values, settings={}).on_conflict_do_nothing()
            )
            row = await session.get_one(ChannelSetting, tuple(pk.values()), with_for_update=True)
            merged = {k: v for k, v in {**row.settings, **changes}.items() if v is not None}
            row.settings, row.updated_by, row.updated_at = merged, updated_by, row_values["updated_at"]
        return dict(merged)

    async def lower_channel_setting(
        self, key: str, maximum: int, *, updated_by: str
    ) -> list[tuple[str, str, str, int]]:
        """Lower the numeric setting ``key`` to ``maximum`` in every channel where it is stored above it (a reload to
        a model with a shorter context). Returns (platform, tenant, channel, old value) of each channel changed."""
        check_id("updated_by", updated_by)
        if maximum < 1:
            raise ValueError(f"a setting lowered to {maximum} would refuse every request; the maximum must be >= 1")
        lowered: list[tuple[str, str, str, int]] = []
        async with self._write() as session:
            rows = await session.scalars(select(ChannelSetting).with_for_update())
            now = utc_now()
            for row in rows:
                old = row.settings.get(key)
                if isinstance(old, int | float) and not isinstance(old, bool) and old > maximum:
                    row.settings = {**row.settings, key: maximum}
                    row.updated_by, row.updated_at = updated_by, now
                    lowered.append((row.platform, row.tenant, row.channel, old))
        return lowered

    # -- accountability ------------------------------------------------------------------------------------------

    async def record_checkpoint_load(
        self, *, name: str, sha256: str | None, requested_by: str, succeeded: bool, detail: str = ""
    ) -> CheckpointLoadRecord:
        row = CheckpointLoad(
            name=for_audit(name),
            sha256=check_sha256(sha256) if sha256 is not None else None,
            requested_by=check_id("requested_by", requested_by),
            created_at=utc_now(),
            succeeded=succeeded,
            detail=for_audit(detail),
        )
        async with self._write() as session:
            session.add(row)
        return checkpoint_load_record(row)

    async def recent_checkpoint_loads(self, limit: int = 20) -> list[CheckpointLoadRecord]:
        """Newest first."""
        async with self._read() as session:
            rows = await session.scalars(select(CheckpointLoad).order_by(CheckpointLoad.id.desc()).limit(limit))
            return [checkpoint_load_record(row) for row in rows]

    async def record_audit(
        self,
        *,
        platform: str,
        tenant: str,
        actor_id: str,
        action: str,
        target: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Record an admin action, e.g. action="checkpoint.reload", target="gpt2-medium355M-sft.pth"."""
        if not action or len(action) > 64:
            raise ValueError(f"audit action must be 1 to 64 characters, got {action!r}")
        row = AuditEntry(
            created_at=utc_now(),
            platform=check_id("platform", platform),
            tenant=check_id("tenant", tenant),
            actor_id=check_id("actor_id", actor_id),
            action=action,
            target=for_audit(target),
            detail={k: for_audit(v) if isinstance(v, str) else v for k, v in (detail or {}).items()},
        )
        async with self._write() as session:
            session.add(row)
        return audit_record(row)

    async def audit_entries(
        self, *, platform: str | None = None, tenant: str | None = None, limit: int = 50
    ) -> list[AuditRecord]:
        """Newest first, optionally only one platform's or one tenant's."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if platform is not None:
            query = query.where(AuditEntry.platform == platform)
        if tenant is not None:
            query = query.where(AuditEntry.tenant == tenant)
        async with self._read() as session:
            return [audit_record(row) for row in await session.scalars(query)]

    # -- platform event de-duplication ---------------------------------------------------------------------------

    async def mark_event_processed(self, platform: str, event_id: str) -> bool:
        """True the first time an event id is seen, False for every redelivery, across all bot processes."""
        row = {"platform": check_id("platform", platform), "event_id": check_id("event_id", event_id)}
        async with self._write() as session:
            inserted = await session.scalar(
                self._insert(ProcessedEvent)
                .values(**row, processed_at=utc_now())
                .on_conflict_do_nothing()
                .returning(ProcessedEvent.event_id)
            )
        return inserted is not None

    # -- internals -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction; a database that cannot be used raises DatabaseUnavailableError (nothing written)."""
        async with unavailable_as_error(), self._sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with unavailable_as_error(), self._read_sessions() as session:
            yield session

    @asynccontextmanager
    async def _maintain(self) -> AsyncIterator[AsyncSession]:
        """A write transaction of bulk work no user waits for, under the longer maintenance timeouts."""
        async with unavailable_as_error(), self._maintenance_sessions.begin() as session:
            yield session

    async def _conversation(self, session: AsyncSession, key: ConversationKey) -> tuple[int, datetime]:
        """Get or create; returns the id and creation time. Race-safe: a concurrent creator makes our insert a no-op
        and the second select finds its row (SQLite serialises writers anyway; PostgreSQL's ON CONFLICT waits for
        the other transaction to finish)."""
        params = asdict(key)
        row = (await session.execute(FIND_CONVERSATION, params)).one_or_none()
        if row is None:
            await session.execute(self._create_conversation, {**params, "created_at": utc_now()})
            row = (await session.execute(FIND_CONVERSATION, params)).one()
        return row.id, row.created_at
