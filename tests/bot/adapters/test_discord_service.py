"""`scratchbot run` with Discord, configured by settings alone: it serves the Discord the settings name (a fake one
here, on 127.0.0.1), and a Discord it cannot use (a wrong token, the message content intent not enabled, nothing
listening) stops it with one line saying what to do, and status 2."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from discord.http import Route
from pydantic import SecretStr

from bot.adapters.discord import DiscordAdapter
from bot.app import run_service
from bot.cli.main import main
from bot.settings import Settings
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from tests.bot.adapters.discord_fixtures import (  # noqa: F401  (fixtures, registered under short names)
    TOKEN,
    checkpoints_fixture,
    closed_port,
    config_for,
    fake_fixture,
    generator_fixture,
    manager_fixture,
    serving,
    wait_until,
)
from tests.fake_discord import FakeDiscord
from tests.fake_discord import payloads as p
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=1)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=1), path)
    return path


def mention(text: str) -> dict:
    return p.message(p.CHANNEL_ID, p.ALICE, f"<@{p.APP_ID}> {text}", mentions=[p.BOT])


async def answered(fake: FakeDiscord, question: dict) -> str:
    """The final text of the bot's first reply to ``question`` (the streaming cursor gone)."""

    def final() -> bool:
        return any(not reply.content.endswith("…") for reply in fake.replies_to(question["id"]))

    await wait_until(final, f"the answer to {question['content']!r}", timeout=60)
    return fake.replies_to(question["id"])[0].content


async def test_run_serves_the_discord_its_settings_name(tmp_path: Path, checkpoint: Path, fake: FakeDiscord) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path / "data", checkpoint=checkpoint, precision="fp32", max_new_tokens=8,
        discord_token=SecretStr(TOKEN), discord_api_url=fake.api_base, shutdown_grace_s=5,
    )  # fmt: skip
    running = asyncio.create_task(run_service(settings))
    await wait_until(lambda: fake.connected or running.done(), "the bot to connect", timeout=60)
    question = mention("Hello from a fake Discord")
    await fake.dispatch("MESSAGE_CREATE", question)
    assert await answered(fake, question)  # whatever the tiny model says; the point is that it was said here
    assert fake.calls_to("GET", r"/gateway/bot")  # the gateway came from the API the settings name
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(running, 60) == 0


async def test_two_clients_in_one_process_each_talk_to_their_own_discord(manager, fake: FakeDiscord) -> None:
    other = FakeDiscord(TOKEN)
    await other.start()
    base = Route.BASE
    try:
        first = DiscordAdapter(manager, config_for(fake))
        second = DiscordAdapter(manager, config_for(other))
        async with serving(first, fake), serving(second, other):
            questions = {fake: mention("to the first"), other: mention("to the second")}
            commands = {fake: "aW50ZXJhY3Rpb246" + p.snowflake(), other: "aW50ZXJhY3Rpb246" + p.snowflake()}
            for discord, question in questions.items():
                await discord.dispatch("MESSAGE_CREATE", question)
                await discord.dispatch("INTERACTION_CREATE", p.interaction(p.slash("model"), commands[discord]))
            for discord, question in questions.items():  # each answered by its own client, on its own Discord
                assert await answered(discord, question) == "The answer is 4."
                assert len(discord.calls_to("POST", r"/channels/\d+/messages")) == 1
                # Interaction responses take discord.py's other path (its webhook adapter): per client too.
                await wait_until(lambda d=discord: any(m.content for m in d.answers_for(commands[d])), "/model")
                assert len(discord.calls_to("POST", r"/interactions/\d+/[^/]+/callback")) == 1
        assert base == Route.BASE  # nothing process-wide was moved
    finally:
        await other.close()


START_FAILURES = {  # the settings -> what the one line must name
    "wrong token": ({"DISCORD_TOKEN": "not-the-token"}, "Discord refused the bot token"),
    "intent not enabled": ({"DISCORD_MESSAGE_CONTENT": "true"}, '"Message Content Intent"'),
    "unreachable": ({"DISCORD_API_URL": "http://127.0.0.1:{port}/api/v10"}, "cannot reach Discord at"),
}


@pytest.mark.parametrize("case", START_FAILURES)
async def test_run_stops_with_one_line_and_status_2_when_discord_cannot_be_used(
    checkpoint: Path,
    fake: FakeDiscord,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    settings, says = START_FAILURES[case]
    environment = {"CHECKPOINT": str(checkpoint), "PRECISION": "fp32", "DISCORD_TOKEN": TOKEN}
    environment |= {"DISCORD_API_URL": fake.api_base} | settings
    for name, value in environment.items():
        monkeypatch.setenv(f"SCRATCHBOT_{name}", value.format(port=closed_port()))
    # `scratchbot run` runs its own event loop; this test's loop serves the fake Discord meanwhile.
    status = await asyncio.wait_for(asyncio.to_thread(main, ["run"]), 120)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("scratchbot: error: ") and says in err and err.count("\n") == 1, err
    assert "SCRATCHBOT_" in err  # the sentence names the setting to look at
    assert "Traceback" not in err and [r for r in caplog.records if r.exc_info] == []
