"""A fake Discord (REST and gateway) that the real discord.py client talks to in the adapter's tests."""

from tests.fake_discord.server import Call, FakeDiscord, Posted

__all__ = ["Call", "FakeDiscord", "Posted"]
