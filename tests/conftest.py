"""Every test runs as on a fresh machine: none of the developer's SCRATCHBOT_* settings, and a working directory of
its own, so a `.env` or a `data/` folder in the checkout is neither read nor written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Variables that configure the test run itself (CI sets them), not the bot.
TEST_RUN_VARIABLES = ("SCRATCHBOT_TEST_", "SCRATCHBOT_REQUIRE_")


@pytest.fixture(autouse=True)
def fresh_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [k for k in os.environ if k.startswith("SCRATCHBOT_") and not k.startswith(TEST_RUN_VARIABLES)]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
