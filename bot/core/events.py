"""What platforms report about their own state: a redelivered event, a deleted message, the bot removed from a
guild or workspace. Each keeps the database true to the platform."""

from __future__ import annotations

import logging

from storage.store import Store

log = logging.getLogger(__name__)


class PlatformEvents:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        """True the first time a platform event id is seen by any bot process sharing this database; False for a
        redelivery (Slack retries events it thinks were not acknowledged), which must not be answered again."""
        return await self._store.mark_event_processed(platform, event_id)

    async def message_deleted(self, platform: str, tenant: str, channel: str, message_id: str) -> int:
        """The user deleted a message on the platform: delete our stored copy too. Returns rows deleted."""
        deleted = await self._store.delete_message(
            platform=platform, tenant=tenant, channel=channel, platform_message_id=message_id
        )
        log.debug("message deleted on %s: %d stored copies removed", platform, deleted)
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
