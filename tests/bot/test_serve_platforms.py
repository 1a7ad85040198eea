"""Several platforms in one process: each configured platform gets its adapter, all run side by side, a signal
closes them all, a platform that cannot start stops the service with one line, and one that fails while serving
leaves the others serving until none is left."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot import jobs
from bot.adapters.platform import CredentialsRevoked, PlatformStartError
from bot.app import StartupError, build_adapters, run_service, serve_platforms
from bot.core.conversation import ConversationManager
from bot.settings import Settings
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from storage.records import ConversationKey
from storage.store import open_store
from tests.fake_slack import fixtures
from tests.fake_slack.fixtures import APP_TOKEN, BOT_TOKEN
from tests.fake_slack.payloads import TS, event_callback, mention, slash_command
from tests.fake_slack.server import eventually
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=1)
fake_slack = fixtures.fake_slack


class FakeAdapter:
    """Serves until closed, or fails with ``error`` once it has started."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.started = asyncio.Event()
        self.closed = 0
        self._stop = asyncio.Event()
        self.manager: ConversationManager | None = None

    async def run(self) -> None:
        self.started.set()
        if self.error is not None:
            raise self.error
        await self._stop.wait()

    async def close(self) -> None:
        self.closed += 1
        self._stop.set()


async def test_a_signal_closes_every_platform_and_exits_zero() -> None:
    discord, slack = FakeAdapter("discord"), FakeAdapter("slack")
    serving = asyncio.create_task(serve_platforms([discord, slack]))
    await asyncio.wait_for(asyncio.gather(discord.started.wait(), slack.started.wait()), 10)
    os.kill(os.getpid(), signal.SIGTERM)  # handled by the event loop while serving
    assert await asyncio.wait_for(serving, 10) == 0
    assert (discord.closed, slack.closed) == (1, 1)


async def test_a_platform_failing_while_serving_leaves_the_others_serving(caplog: pytest.LogCaptureFixture) -> None:
    slack = FakeAdapter("slack", CredentialsRevoked("token_revoked: set SCRATCHBOT_SLACK_BOT_TOKEN"))
    discord = FakeAdapter("discord")
    serving = asyncio.create_task(serve_platforms([discord, slack]))
    await asyncio.wait_for(discord.started.wait(), 10)
    await asyncio.sleep(0.05)
    assert not serving.done() and discord.closed == 0  # Discord users are still answered
    revoked = [r for r in caplog.records if "the slack adapter stopped" in r.getMessage()]
    assert len(revoked) == 1 and revoked[0].levelname == "ERROR" and revoked[0].exc_info is None  # one line

    await discord.close()  # its run() returns on its own: the last platform is gone
    assert await asyncio.wait_for(serving, 10) == 1
    assert "no platform is left to serve" in caplog.text


async def test_the_last_platform_failing_exits_one(caplog: pytest.LogCaptureFixture) -> None:
    discord = FakeAdapter("discord", RuntimeError("improper token"))
    assert await asyncio.wait_for(serve_platforms([discord]), 10) == 1
    assert "the discord adapter failed: improper token" in caplog.text


async def test_a_platform_that_cannot_start_stops_the_service_with_its_one_line() -> None:
    discord = FakeAdapter("discord", PlatformStartError("Discord refused the token: set SCRATCHBOT_DISCORD_TOKEN"))
    slack = FakeAdapter("slack")
    with pytest.raises(StartupError, match=r"^Discord refused the token: set SCRATCHBOT_DISCORD_TOKEN$"):
        await asyncio.wait_for(serve_platforms([discord, slack]), 10)
    assert slack.closed == 1


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", checkpoints_dir=tmp_path / "ckpts", **values)


def test_each_configured_platform_gets_an_adapter_and_a_missing_library_names_the_extra(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, discord_token=SecretStr("d"), slack_bot_token=SecretStr("xoxb"), slack_app_token=SecretStr("xapp")
    )
    built = build_adapters(
        None,
        settings,
        {
            "discord": lambda m, s: FakeAdapter("discord"),  # type: ignore[arg-type]
            "slack": lambda m, s: FakeAdapter("slack"),
        },
    )
    assert [a.name for a in built] == ["discord", "slack"]

    def missing(manager: object, settings: object) -> FakeAdapter:
        raise ModuleNotFoundError("No module named 'discord'", name="discord")

    with pytest.raises(StartupError, match=r"pip install 'scratchbot\[discord\]'"):
        build_adapters(None, settings, {"discord": missing, "slack": missing})  # type: ignore[arg-type]


def test_an_adapter_that_refuses_its_configuration_stops_the_start_in_one_line(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, slack_bot_token=SecretStr("xoxb"), slack_app_token=SecretStr("xapp"))

    def refuses(manager: object, settings: object) -> FakeAdapter:
        raise ValueError("Slack Socket Mode needs an app-level token")

    with pytest.raises(StartupError, match=r"^slack cannot start: Slack Socket Mode needs an app-level token$"):
        build_adapters(None, settings, {"slack": refuses})  # type: ignore[arg-type]


async def test_run_serves_the_configured_platforms_instead_of_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=1), checkpoint)
    settings = settings_for(
        tmp_path, checkpoint=checkpoint, discord_token=SecretStr("token"), precision="fp32", shutdown_grace_s=0.1
    )
    adapter = FakeAdapter("discord")
    retention_unwound = asyncio.Event()

    async def slow_retention(store: object, days: int) -> None:
        """Still running at shutdown, as on a loaded machine; it must be over before the store closes."""
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)
            retention_unwound.set()

    monkeypatch.setattr(jobs, "apply_retention", slow_retention)

    def factory(manager: ConversationManager, given: Settings) -> FakeAdapter:
        adapter.manager = manager
        return adapter

    running = asyncio.create_task(run_service(settings, factories={"discord": factory}))
    await asyncio.wait_for(adapter.started.wait(), 60)
    assert adapter.manager is not None and adapter.manager.generator.info.name == "tiny.safetensors"
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(running, 60) == 0
    assert adapter.closed == 1
    assert retention_unwound.is_set()
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running against the closed store


async def test_the_real_adapters_are_built_from_the_settings(tmp_path: Path) -> None:
    from bot.adapters.discord import DiscordAdapter
    from bot.adapters.slack.adapter import SlackAdapter

    settings = settings_for(
        tmp_path, discord_token=SecretStr("discord-token"), discord_message_content=True, shutdown_grace_s=7,
        discord_api_url="http://127.0.0.1:9/api/v10/", rate_limit_max_wait_s=45, slack_bot_token=SecretStr("xoxb-1"),
        slack_signing_secret=SecretStr("shh"), slack_http_port=0, slack_api_url="http://127.0.0.1:9/api",
    )  # fmt: skip
    discord, slack = build_adapters(None, settings)  # type: ignore[arg-type]
    assert isinstance(discord, DiscordAdapter) and isinstance(slack, SlackAdapter)
    assert discord._config.message_content and discord._config.close_grace_s == 7
    assert discord._config.api_url == "http://127.0.0.1:9/api/v10"  # discord.py's paths bring their own slash
    assert discord._client.http.max_ratelimit_timeout == 45  # the ceiling reached discord.py
    assert (slack._config.transport, slack._config.close_grace_s, slack._config.http_port) == ("http", 7, 0)
    assert slack.client.base_url == "http://127.0.0.1:9/api/"  # where every Web API call goes
    assert "discord-token" not in repr(discord._config)


async def test_slack_is_served_from_the_settings_alone_and_a_revoked_token_ends_the_run(
    tmp_path: Path, fake_slack, caplog: pytest.LogCaptureFixture
) -> None:
    """`run_service` with nothing but Settings: the real model, store and Slack adapter, every Web API call (Bolt's,
    Socket Mode's apps.connections.open, ours) going where SCRATCHBOT_SLACK_API_URL says."""
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=1), checkpoint)
    settings = settings_for(
        tmp_path, checkpoint=checkpoint, precision="fp32", max_new_tokens=8, shutdown_grace_s=1,
        slack_bot_token=SecretStr(BOT_TOKEN), slack_app_token=SecretStr(APP_TOKEN), slack_api_url=fake_slack.api_url,
    )  # fmt: skip
    serving = asyncio.create_task(run_service(settings))
    await eventually(lambda: fake_slack.connected == 1, timeout_s=60, what="Socket Mode to connect")
    await fake_slack.send("events_api", event_callback(mention("What is 2+2?", TS)))
    await eventually(lambda: answered(fake_slack.thread("C1", TS)), timeout_s=60, what="the model's answer")
    await fake_slack.send("slash_commands", slash_command("/model", "", fake_slack.response_url()))
    await eventually(lambda: fake_slack.ephemeral, what="/model's answer, through Bolt's respond()")
    assert fake_slack.ephemeral[0]["text"].startswith("Model: tiny.safetensors")
    assert [c.token for c in fake_slack.called("apps.connections.open")] == [APP_TOKEN]
    assert {"auth.test", "chat.postMessage"} <= {c.method for c in fake_slack.calls if c.token == BOT_TOKEN}
    fake_slack.refused_tokens[BOT_TOKEN] = "token_revoked"
    await fake_slack.send("events_api", event_callback(mention("Still there?", "1700000101.000100")))
    assert await asyncio.wait_for(serving, 60) == 1  # Slack was the only platform: `scratchbot run` exits 1
    async with open_store(settings.resolved_database_url) as store:
        stored = await store.recent_history(ConversationKey("slack", "T1", "C1", TS))
    assert stored[0].text == "What is 2+2?"
    assert not [r for r in caplog.records if r.exc_info]  # the refused answer left no traceback


def answered(thread: list[str]) -> bool:
    """One message in the thread, streamed to its end: neither the placeholder nor text with the cursor."""
    return len(thread) == 1 and thread[0] != "…" and not thread[0].endswith(" …")
