"""Shared fixtures for the service tests: a migrated SQLite store in a throwaway file, and a checkpoints directory
holding one checkpoint (`next.safetensors`) for reload commands to name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.store import Store, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}") as opened:
        yield opened


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "next.safetensors").write_bytes(b"weights")
    return directory
