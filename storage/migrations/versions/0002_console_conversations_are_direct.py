"""The terminal chat's conversations become direct ones: tenant "local" -> "dm:<the user>".

The terminal chat now files its conversation as a direct conversation of the local user (`storage.records.dm_tenant`),
so `forget` deletes it whole, the bot's replies included. Conversations an earlier version filed under the tenant
"local" move there too; without this they would drop out of the prompt's history and `forget` would leave the bot's
replies behind. A conversation with no user message, or whose new key is taken already, stays where it is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_OWNER = (
    "(SELECT m.author_id FROM messages m WHERE m.conversation_id = conversations.id AND m.role = 'user' "
    "ORDER BY m.id LIMIT 1)"
)


def upgrade() -> None:
    op.execute(
        f"""
        UPDATE conversations SET tenant = 'dm:' || {_OWNER}
        WHERE platform = 'console' AND tenant = 'local' AND {_OWNER} IS NOT NULL
          AND NOT EXISTS (
            SELECT 1 FROM conversations AS taken
            WHERE taken.platform = 'console' AND taken.channel = conversations.channel
              AND taken.thread = conversations.thread AND taken.tenant = 'dm:' || {_OWNER}
          )
        """
    )


def downgrade() -> None:
    op.execute("UPDATE conversations SET tenant = 'local' WHERE platform = 'console' AND tenant LIKE 'dm:%'")
