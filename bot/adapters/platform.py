"""What the composition root asks of every platform adapter: run beside the others, close on a stop."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class PlatformAdapter(Protocol):
    """One chat platform's connection, started by the composition root beside the others."""

    name: str  # "discord", "slack"

    async def run(self) -> None:
        """Connect and serve until `close` is called; raise if the platform refuses us for good (a bad token)."""

    async def close(self) -> None:
        """Stop taking new messages, let answers in progress finish, disconnect. Safe to call more than once."""
