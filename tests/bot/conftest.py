"""Shared fixtures for the service tests: a migrated SQLite store in a throwaway file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.store import Store, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}") as opened:
        yield opened
