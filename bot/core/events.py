"""What platforms report about their own state: a redelivered event, deleted messages, a deleted channel or thread,
the bot removed from a guild or workspace. Each keeps the database true to the platform."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from storage.store import Store

log = logging.getLogger(__name__)


class PlatformEvents:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        """True the first time a platform event id is seen by any bot process sharing this database; False for a
        redelivery (Slack retries events it thinks were not acknowledged), which must not be answered again."""
        return await self._store.mark_event_processed(platform, event_id)

    async def messages_deleted(self, platform: str, tenant: str, channel: str, message_ids: Sequence[str]) -> int:
        """Users or moderators deleted messages on the platform (one, or a bulk deletion): delete our stored copies
        too. Returns rows deleted."""
        deleted = await self._store.delete_messages(
            platform=platform, tenant=tenant, channel=channel, platform_message_ids=message_ids
        )
        log.debug("%d messages deleted on %s: %d stored copies removed", len(message_ids), platform, deleted)
        return deleted

    async def channel_deleted(self, platform: str, tenant: str, channel: str, thread: str | None, reason: str) -> int:
        """A channel (``thread`` None) or one thread was deleted on the platform: delete its conversations, and
        audit that. Returns messages deleted."""
        deleted = await self._store.purge_channel(platform, tenant, channel, thread)
        await self._store.record_audit(
            platform=platform,
            tenant=tenant,
            actor_id="platform",
            action="thread.purge" if thread else "channel.purge",
            target=thread or channel,
            detail={"reason": reason, "channel": channel, "messages_deleted": deleted},
        )
        return deleted

    async def tenant_removed(self, platform: str, tenant: str, reason: str) -> int:
        """The bot was removed from a guild or workspace: delete everything stored for it, and audit that."""
        deleted = await self._store.purge_tenant(platform, tenant)
        await self._store.record_audit(
            platform=platform,
            tenant=tenant,
            actor_id="platform",
            action="tenant.purge",
            target=tenant,
            detail={"reason": reason, "messages_deleted": deleted},
        )
        return deleted
