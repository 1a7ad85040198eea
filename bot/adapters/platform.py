"""What the composition root asks of every platform adapter: run beside the others, close on a stop, and say why it
stopped in a way the root can act on."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class PlatformStartError(Exception):
    """The platform could not be reached or refused us before we served anything (no network, a wrong token, a
    privileged intent not enabled). The message is one sentence for the operator: what failed and what to do.
    `scratchbot run` prints it as its error and exits 2, since restarting will not help until someone acts."""


class CredentialsRevoked(Exception):  # noqa: N818 -- what happened, not an error of ours
    """The platform refused our credentials while serving (token revoked, app uninstalled, account deactivated).
    The adapter has stopped; the message names the setting to fix. Other platforms keep serving."""


class PlatformAdapter(Protocol):
    """One chat platform's connection, started by the composition root beside the others."""

    name: str  # "discord", "slack"

    async def run(self) -> None:
        """Connect and serve until `close` is called. Raises `PlatformStartError` when it cannot start, and
        `CredentialsRevoked` when the platform refuses us for good while serving."""

    async def close(self) -> None:
        """Stop taking new messages, let answers in progress finish, disconnect. Safe to call more than once."""
