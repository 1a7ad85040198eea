"""Who may run admin commands. Platform-neutral: an adapter says who the user is, this policy decides.

Admins are the bot application's owners (as the platform reports them) and the ids configured per platform.
Guild or workspace permissions alone are not enough: a reload changes the model for every tenant at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)


class AdminPolicy:
    def __init__(self, admins: Mapping[str, Iterable[str]], *, trusted_platforms: Iterable[str] = ("console",)):
        # Slack ids are only unique per workspace, so they are configured as "TEAM:USER".
        self._admins = {platform: frozenset(ids) for platform, ids in admins.items()}
        self._trusted = frozenset(trusted_platforms)  # the local terminal's user started the process

    def is_operator(self, platform: str, *, is_owner: bool = False) -> bool:
        """The person who runs the bot: the local terminal's user, or the application's owner as the platform says.
        The bot's own limits (the per-user rate limit) do not apply to them."""
        return platform in self._trusted or is_owner

    def is_admin(self, platform: str, tenant: str, user_id: str, *, is_owner: bool = False) -> bool:
        if self.is_operator(platform, is_owner=is_owner):
            return True
        ids = self._admins.get(platform, frozenset())
        return user_id in ids or f"{tenant}:{user_id}" in ids
