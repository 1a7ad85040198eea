"""Start-up: which checkpoint is served, what happens without one or without a platform to reach, and a clean stop
on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import pexpect
import pytest

from bot.cli.main import main
from bot.core.checkpoint_names import NoCheckpointError, find_checkpoint
from bot.settings import Settings
from llm import assets
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from tests.fake_slack import fixtures
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=2)
fake_slack = fixtures.fake_slack


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", checkpoints_dir=tmp_path / "ckpts", **values)


def test_the_configured_checkpoint_comes_first(tmp_path: Path) -> None:
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "other.pth").write_bytes(b"x")
    chosen = tmp_path / "mine.safetensors"
    assert find_checkpoint(chosen, tmp_path / "ckpts", bundled=None) == chosen


def test_then_the_newest_in_the_directory_then_the_bundled_demo(tmp_path: Path) -> None:
    bundled = tmp_path / "demo.safetensors"
    bundled.write_bytes(b"x")
    assert find_checkpoint(None, tmp_path / "ckpts", bundled=bundled) == bundled
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "new.pth").write_bytes(b"x")
    assert find_checkpoint(None, tmp_path / "ckpts", bundled=bundled).name == "new.pth"


def test_without_any_checkpoint_run_says_how_to_get_one_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(NoCheckpointError, match="scratchbot download gpt2-medium"):
        find_checkpoint(None, tmp_path / "ckpts", bundled=None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(assets, "DEMO_CHECKPOINT", tmp_path / "no-demo.safetensors")
    for name in [k for k in os.environ if k.startswith("SCRATCHBOT_")]:
        monkeypatch.delenv(name)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchbot: error: no checkpoint to serve") and "SCRATCHBOT_CHECKPOINT" in err


def test_invalid_settings_are_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_MAX_BATCH", "0")
    assert main(["run"]) == 2
    assert "SCRATCHBOT_MAX_BATCH" in capsys.readouterr().err


def test_sigterm_stops_the_terminal_chat_cleanly(tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=4), checkpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRATCHBOT_")}
    env.update(SCRATCHBOT_CHECKPOINT=str(checkpoint), SCRATCHBOT_DATA_DIR=str(tmp_path / "data"))
    child = pexpect.spawn(
        sys.executable, ["-m", "bot.cli", "run"], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=120
    )
    try:
        child.expect_exact("you> ")
        child.sendline("Tell me a story")
        child.expect_exact("bot> ")
        child.kill(signal.SIGTERM)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and child.signalstatus is None


def test_an_unreachable_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=4), checkpoint)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SCRATCHBOT_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchbot: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_an_answer_length_the_model_cannot_hold_is_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_MAX_NEW_TOKENS", "512")  # accepted by the setting's range, not by this model
    assert main(["run"]) == 2  # the bundled demo model: a context of 512 tokens
    err = capsys.readouterr().err
    assert "SCRATCHBOT_MAX_NEW_TOKENS=512 is too long for demo-model.safetensors" in err and "at most 444" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("slack", ["unreachable", "wrong_bot_token"])
async def test_a_slack_that_cannot_be_used_is_one_line_and_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog, fake_slack, slack
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=4), checkpoint)
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("SCRATCHBOT_")]:
        monkeypatch.delenv(name)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/api/"
    api_url = closed if slack == "unreachable" else fake_slack.api_url
    fake_slack.refused_tokens["xoxb-wrong"] = "invalid_auth"
    env = {"CHECKPOINT": str(checkpoint), "SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_APP_TOKEN": fixtures.APP_TOKEN,
           "SLACK_API_URL": api_url, "PRECISION": "fp32"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(f"SCRATCHBOT_{name}", value)
    # `scratchbot run` on a thread of its own, as from a shell: this loop keeps serving the fake Slack meanwhile.
    assert await asyncio.wait_for(asyncio.to_thread(main, ["run"]), 60) == 2
    err = capsys.readouterr().err
    expected = {
        "unreachable": f"scratchbot: error: cannot reach Slack's Web API at {closed} (Cannot connect to host",
        "wrong_bot_token": "scratchbot: error: Slack refused SCRATCHBOT_SLACK_BOT_TOKEN (invalid_auth from auth.test)",
    }[slack]
    assert err.startswith(expected) and err.count("\n") == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # and no traceback logged
