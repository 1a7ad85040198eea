"""The statements the `Store` runs, and the small helpers its methods share.

The hot-path statements (every message runs them) are built once, with bind parameters: building a statement and its
cache key on each call cost as much CPU as executing it. They use the Core tables, so that an insert is one plain
INSERT rather than the ORM's bulk-insert machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from sqlalchemy import ColumnElement, Delete, Table, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ChannelSetting, Conversation, Message

log = logging.getLogger(__name__)

INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
AUDIT_TEXT_CHARS = 200  # the audit log keeps at most this much of any text it records (an argument, an error)

CONVERSATIONS = cast(Table, Conversation.__table__)
MESSAGES = cast(Table, Message.__table__)
IS_CONVERSATION = (
    Conversation.platform == bindparam("platform"),
    Conversation.tenant == bindparam("tenant"),
    Conversation.channel == bindparam("channel"),
    Conversation.thread == bindparam("thread"),
)
FIND_CONVERSATION = select(Conversation.id, Conversation.created_at).where(*IS_CONVERSATION)
FIND_MESSAGE = select(MESSAGES).where(
    MESSAGES.c.conversation_id == bindparam("conversation_id"),
    MESSAGES.c.platform_message_id == bindparam("platform_message_id"),
)
FIND_STORED = (
    select(MESSAGES.c.id)
    .join(Conversation, MESSAGES.c.conversation_id == Conversation.id)
    .where(*IS_CONVERSATION, MESSAGES.c.platform_message_id == bindparam("platform_message_id"))
    .limit(1)
)
HISTORY_NEWEST_FIRST = (
    select(MESSAGES)
    .join(Conversation, MESSAGES.c.conversation_id == Conversation.id)
    .where(*IS_CONVERSATION)
    .order_by(MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)


def for_audit(text: str) -> str:
    """At most AUDIT_TEXT_CHARS characters, with a visible mark where it was cut (the audit log outlives `forget`
    and retention, so it keeps no more of what anyone typed than it needs), and storable: the record of a refused
    command must not fail on the character that got it refused."""
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= AUDIT_TEXT_CHARS else text[: AUDIT_TEXT_CHARS - 1] + "…"


async def delete_rows(session: AsyncSession, statement: Delete) -> int:
    # The session holds no objects we would need to keep in sync, so skip the ORM's bookkeeping.
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount  # type: ignore[attr-defined]


async def delete_conversation_rows(
    session: AsyncSession,
    platform: str,
    where: Callable[[type[Conversation] | type[ChannelSetting]], ColumnElement[bool]],
) -> None:
    """Delete the conversations and channel settings on `platform` that ``where(table)`` selects (both tables have
    tenant and channel columns). The callers delete (and count) the messages first; ON DELETE CASCADE is only the
    safety net."""
    for table in (Conversation, ChannelSetting):
        await session.execute(delete(table).where(table.platform == platform, where(table)))
