"""Who may run admin commands, per-user rate limits, channel settings, and checkpoint names that stay put."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig, SettingError, describe, parse_setting
from bot.core.checkpoint_names import CheckpointNameError, list_checkpoints, resolve_checkpoint
from bot.core.ratelimit import RateLimiter


def test_admins_are_configured_ids_owners_and_the_local_console() -> None:
    policy = AdminPolicy({"discord": ["42"], "slack": ["T1:U1"]})
    assert policy.is_admin("discord", "guild", "42")
    assert not policy.is_admin("discord", "guild", "43")
    assert policy.is_admin("discord", "guild", "43", is_owner=True)
    assert policy.is_admin("slack", "T1", "U1")
    assert not policy.is_admin("slack", "T2", "U1")  # the same user id in another workspace is someone else
    assert policy.is_admin("console", "local", "anyone")
    assert not policy.is_admin("slack", "T1", "42")


def test_rate_limit_counts_per_user_in_a_sliding_window() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.check("a") == 0 and limiter.check("a") == 0
    assert limiter.check("a") == pytest.approx(60.0)
    assert limiter.check("b") == 0  # others are not affected
    now[0] = 30.0
    assert limiter.check("a") == pytest.approx(30.0)
    now[0] = 60.0
    assert limiter.check("a") == 0


@pytest.mark.parametrize(
    "key,raw,expected",
    [
        ("temperature", "0.7", 0.7),
        ("top_k", "off", None),
        ("top-k", "40", 40),
        ("max_new_tokens", "100", 100),
        ("enabled", "off", False),
        ("temperature", "default", None),
    ],
)
def test_valid_channel_settings_parse(key: str, raw: str, expected: object) -> None:
    assert parse_setting(key, raw)[1] == expected


@pytest.mark.parametrize(
    "key,raw,message",
    [
        ("temperature", "3", "out of range"),
        ("temperature", "warm", "not a number"),
        ("max_new_tokens", "1.5", "not a whole number"),
        ("colour", "blue", "unknown setting 'colour'; settings are: temperature"),
        ("enabled", "maybe", "not on or off"),
    ],
)
def test_invalid_channel_settings_say_why(key: str, raw: str, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        parse_setting(key, raw)


def test_channel_settings_overlay_the_defaults() -> None:
    defaults = ChannelConfig(max_new_tokens=256, temperature=0.0, top_k=None, top_p=None, history_messages=20)
    config = defaults.with_stored({"temperature": 0.9, "unknown_old_key": 1})
    assert config.temperature == 0.9 and config.max_new_tokens == 256
    text = describe(config, {"temperature": 0.9})
    assert "temperature = 0.9:" in text and "max_new_tokens = 256 (default)" in text


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "old.pth").write_bytes(b"x")
    os.utime(directory / "old.pth", (1_000_000, 1_000_000))
    (directory / "new.safetensors").write_bytes(b"x")
    (directory / "notes.txt").write_text("not a checkpoint")
    (directory / "hf").mkdir()
    (directory / "hf" / "model.safetensors").write_bytes(b"x")
    os.utime(directory / "hf", (2_000_000, 2_000_000))
    (tmp_path / "secret.pth").write_bytes(b"x")
    (directory / "escape.pth").symlink_to(tmp_path / "secret.pth")
    return directory


def test_checkpoints_are_listed_newest_first(checkpoints: Path) -> None:
    names = [p.name for p in list_checkpoints(checkpoints)]
    assert set(names) == {"old.pth", "new.safetensors", "hf"}  # the link out of the directory is not offered
    assert names == ["new.safetensors", "hf", "old.pth"]
    assert resolve_checkpoint(checkpoints, None).name == "new.safetensors"


def test_a_checkpoint_name_resolves_inside_the_directory(checkpoints: Path) -> None:
    assert resolve_checkpoint(checkpoints, "old.pth") == (checkpoints / "old.pth").resolve()
    assert resolve_checkpoint(checkpoints, "hf") == (checkpoints / "hf").resolve()


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "..", ".", "hf/model.safetensors", "escape.pth", "", "a\x00b"]
)
def test_names_that_escape_or_are_paths_are_refused(checkpoints: Path, name: str) -> None:
    with pytest.raises(CheckpointNameError):
        resolve_checkpoint(checkpoints, name)


def test_unknown_name_lists_what_is_available(checkpoints: Path) -> None:
    with pytest.raises(CheckpointNameError, match=r"available: .*old\.pth"):
        resolve_checkpoint(checkpoints, "missing.pth")
    with pytest.raises(CheckpointNameError, match=r"no checkpoint named 'notes\.txt'"):
        resolve_checkpoint(checkpoints, "notes.txt")
    with pytest.raises(CheckpointNameError, match="not a checkpoint name"):
        resolve_checkpoint(checkpoints, ".hidden")


async def test_a_settings_read_that_began_before_a_change_does_not_cache_the_old_value(store) -> None:
    from bot.core.channel_settings import ChannelSettings

    settings = ChannelSettings(store)
    key = ("discord", "g1", "c1")
    await settings.update(key, {"temperature": 0.2}, "admin")
    settings.forget_all()
    reading_started = asyncio.Event()
    original = store.get_channel_settings

    async def slow_read(**where: str) -> dict:
        found = await original(**where)  # the old value, read before the change below
        reading_started.set()
        await asyncio.sleep(0.05)
        return found

    store.get_channel_settings = slow_read  # type: ignore[method-assign]
    reading = asyncio.create_task(settings.get(key))
    await reading_started.wait()
    await settings.update(key, {"temperature": 0.9}, "admin")
    assert (await reading)["temperature"] == 0.2  # that read saw the old value...
    store.get_channel_settings = original  # type: ignore[method-assign]
    assert (await settings.get(key))["temperature"] == 0.9  # ...but did not keep it for the next one
