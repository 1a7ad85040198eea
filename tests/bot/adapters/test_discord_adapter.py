"""The Discord adapter end to end: the real discord.py client against a fake Discord (tests/fake_discord)."""

from __future__ import annotations

from tests.bot.adapters.discord_fixtures import (  # noqa: F401  (fixtures, registered under short names)
    Bot,
    application_fixture,
    bot_fixture,
    checkpoints_fixture,
    generator_fixture,
    manager_fixture,
)


async def test_a_mention_gets_a_reply_to_its_message(bot: Bot) -> None:
    question = await bot.mention("What is 2+2?")
    replies = await bot.answered(question, "The answer is 4.")
    assert len(replies) == 1
