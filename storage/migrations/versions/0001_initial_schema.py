"""Initial schema: conversations, messages, channel settings, checkpoint loads, audit log, processed events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Written out in full rather than importing `storage.models`: a migration records the schema as it was then, and must
not change when the models do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _id() -> sa.String:
    return sa.String(length=128)


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", _id(), nullable=False),
        sa.Column("tenant", _id(), nullable=False),
        sa.Column("channel", _id(), nullable=False),
        sa.Column("thread", _id(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint(
            "platform", "tenant", "channel", "thread", name=op.f("uq_conversations_platform_tenant_channel_thread")
        ),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            sa.Enum("user", "assistant", name="role", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("author_id", _id(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("platform_message_id", _id(), nullable=True),
        sa.Column("checkpoint_name", sa.Text(), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint(
            "conversation_id", "platform_message_id", name=op.f("uq_messages_conversation_id_platform_message_id")
        ),
    )
    op.create_index(op.f("ix_messages_conversation_id_id"), "messages", ["conversation_id", "id"])
    op.create_index(op.f("ix_messages_author_id"), "messages", ["author_id"])
    op.create_index(op.f("ix_messages_created_at"), "messages", ["created_at"])
    op.create_table(
        "channel_settings",
        sa.Column("platform", _id(), nullable=False),
        sa.Column("tenant", _id(), nullable=False),
        sa.Column("channel", _id(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("updated_by", _id(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "tenant", "channel", name=op.f("pk_channel_settings")),
    )
    op.create_table(
        "checkpoint_loads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("requested_by", _id(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoint_loads")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("platform", _id(), nullable=False),
        sa.Column("tenant", _id(), nullable=False),
        sa.Column("actor_id", _id(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_platform_tenant_id"), "audit_log", ["platform", "tenant", "id"])
    op.create_table(
        "processed_events",
        sa.Column("platform", _id(), nullable=False),
        sa.Column("event_id", _id(), nullable=False),
        sa.Column("processed_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "event_id", name=op.f("pk_processed_events")),
    )
    op.create_index(op.f("ix_processed_events_processed_at"), "processed_events", ["processed_at"])


def downgrade() -> None:
    op.drop_table("processed_events")
    op.drop_table("audit_log")
    op.drop_table("checkpoint_loads")
    op.drop_table("channel_settings")
    op.drop_table("messages")
    op.drop_table("conversations")
