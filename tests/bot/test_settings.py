"""Settings come from SCRATCHBOT_* variables and .env; secrets never show; .env.example documents every one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = Settings()
    assert settings.platforms == []
    assert settings.resolved_database_url == "sqlite+aiosqlite:///data/scratchbot.db"
    assert settings.precision == "int8" and settings.temperature == 0.0


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SCRATCHBOT_MAX_NEW_TOKENS=64\nSCRATCHBOT_DISCORD_ADMIN_IDS=1, 2 ,3\n")
    monkeypatch.setenv("SCRATCHBOT_TEMPERATURE", "0.7")
    monkeypatch.setenv("SCRATCHBOT_SLACK_ADMIN_IDS", "T1:U1")
    settings = Settings()
    assert settings.max_new_tokens == 64 and settings.temperature == 0.7
    assert settings.discord_admin_ids == ["1", "2", "3"] and settings.slack_admin_ids == ["T1:U1"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("TEMPERATURE", "5"), ("TEMPERATURE", "nan"), ("DATABASE_STATEMENT_TIMEOUT_S", "1e7"),
     ("DATABASE_STATEMENT_TIMEOUT_S", "inf"), ("DATABASE_STATEMENT_TIMEOUT_S", "0.0001"),
     ("DATABASE_CONNECT_TIMEOUT_S", "1e-9"), ("REQUEST_TIMEOUT_S", "inf"), ("RETENTION_DAYS", "1000000000"),
     ("SUMMARIZE_DEFAULT", "501"), ("SHUTDOWN_GRACE_S", "nan"), ("DISCORD_API_URL", "discord.com/api/v10"),
     ("DISCORD_API_URL", "https://discord.com/api/v10?x=1"), ("RATE_LIMIT_MAX_WAIT_S", "10"),
     ("RATE_LIMIT_MAX_WAIT_S", "inf")],
)  # fmt: skip
def test_values_that_would_break_the_bot_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"SCRATCHBOT_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_secrets_never_appear_in_repr_or_str(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    secrets = {
        "SCRATCHBOT_DISCORD_TOKEN": "discord-secret-token-123",
        "SCRATCHBOT_SLACK_BOT_TOKEN": "xoxb-secret-456",
        "SCRATCHBOT_SLACK_APP_TOKEN": "xapp-secret-789",
        "SCRATCHBOT_SLACK_SIGNING_SECRET": "signing-secret-000",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    assert not any(value in shown for value in secrets.values())
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "discord-secret-token-123"
    assert settings.platforms == ["discord", "slack"]


def test_env_example_lists_every_setting() -> None:
    documented = set(re.findall(r"SCRATCHBOT_([A-Z0-9_]+)=", (ROOT / ".env.example").read_text()))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_env_example_shows_the_real_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every commented-out line with a value is the default: uncommenting it changes nothing."""
    monkeypatch.chdir(tmp_path)
    example = (ROOT / ".env.example").read_text()
    shown = dict(re.findall(r"^# SCRATCHBOT_([A-Z0-9_]+)=(.*)$", example, re.MULTILINE))
    assert set(shown) == {name.upper() for name in Settings.model_fields}  # every setting, with its default
    (tmp_path / ".env").write_text("".join(f"SCRATCHBOT_{name}={value}\n" for name, value in shown.items()))
    assert Settings().model_dump() == Settings(_env_file=None).model_dump()


def test_an_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SCRATCHBOT_TOP_K=\nSCRATCHBOT_TOP_P=\nSCRATCHBOT_CHECKPOINT=\n")
    monkeypatch.setenv("SCRATCHBOT_DATABASE_URL", "")
    settings = Settings()
    assert (settings.top_k, settings.top_p, settings.checkpoint, settings.database_url) == (None, None, None, None)
    assert not settings.is_set("top_k")


def test_invalid_settings_name_every_bad_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_TEMPERATURE", "warm")
    monkeypatch.setenv("SCRATCHBOT_MAX_BATCH", "0")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "SCRATCHBOT_TEMPERATURE" in str(refused.value) and "SCRATCHBOT_MAX_BATCH" in str(refused.value)


def test_the_judge_key_for_evaluate_is_a_setting_and_kept_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_JUDGE_API_KEY", "sk-judge-secret")
    settings = Settings()
    assert "sk-judge-secret" not in repr(settings)
    assert settings.judge_api_key is not None and settings.judge_api_key.get_secret_value() == "sk-judge-secret"


@pytest.mark.parametrize(
    ("values", "refused"),
    [({"SLACK_APP_TOKEN": "xapp-1"}, "SCRATCHBOT_SLACK_APP_TOKEN is set but SCRATCHBOT_SLACK_BOT_TOKEN"),
     ({"SLACK_SIGNING_SECRET": "s"}, "SCRATCHBOT_SLACK_SIGNING_SECRET is set but SCRATCHBOT_SLACK_BOT_TOKEN"),
     ({"SLACK_BOT_TOKEN": "xoxb-1"}, "needs SCRATCHBOT_SLACK_APP_TOKEN (Socket Mode) or"),
     ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_MODE": "socket", "SLACK_SIGNING_SECRET": "s"}, "Socket Mode needs"),
     ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_MODE": "http", "SLACK_APP_TOKEN": "xapp-1"}, "or SCRATCHBOT_SLACK_SIGNING")],
)  # fmt: skip
def test_half_a_slack_configuration_is_refused_rather_than_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, str], refused: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in values.items():
        monkeypatch.setenv(f"SCRATCHBOT_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert refused in str(caught.value) and "Value error" not in str(caught.value)
    assert not any(secret in str(caught.value) for secret in ("xoxb-1", "xapp-1"))


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [("DEVICE", "gpu", "SCRATCHBOT_DEVICE"), ("DEVICE", "cuda:x", "SCRATCHBOT_DEVICE"),
     ("DISCORD_ADMIN_IDS", "123,@alice", "'@alice' is not a Discord user id"),
     ("SLACK_ADMIN_IDS", "U0456DEF", "'U0456DEF' is not TEAM:USER"),
     ("TOP_K", "50258", "SCRATCHBOT_TOP_K")],
)  # fmt: skip
def test_ids_and_names_the_bot_could_never_match_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, refused: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"SCRATCHBOT_{name}", value)
    with pytest.raises(SettingsError, match=refused):
        load_settings()


def test_accepted_forms_of_device_ids_and_log_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_DEVICE", "cuda:1")
    monkeypatch.setenv("SCRATCHBOT_DISCORD_ADMIN_IDS", "123456789012345678")
    monkeypatch.setenv("SCRATCHBOT_SLACK_ADMIN_IDS", "T0123ABC:U0456DEF")
    monkeypatch.setenv("SCRATCHBOT_LOG_LEVEL", "debug")
    settings = load_settings()
    assert (settings.device, settings.log_level) == ("cuda:1", "DEBUG")


def test_a_data_directory_that_is_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").write_text("not a folder")
    monkeypatch.setenv("SCRATCHBOT_DATA_DIR", "data")
    with pytest.raises(SettingsError, match="SCRATCHBOT_DATA_DIR: data is a file"):
        load_settings()


def test_one_tenants_share_defaults_to_half_of_what_the_bot_accepts(tmp_path: Path) -> None:
    assert Settings(_env_file=None, max_batch=8, queue_size=64).tenant_share == 36
    assert Settings(_env_file=None, max_batch=1, queue_size=1).tenant_share == 1
    assert Settings(_env_file=None, tenant_max_active=5).tenant_share == 5
    with pytest.raises(ValidationError):
        Settings(_env_file=None, tenant_max_active=0)


@pytest.mark.parametrize(
    ("given", "used"),
    [("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api/"),
     ("https://slack-proxy.internal/api", "https://slack-proxy.internal/api/")],
)  # fmt: skip
def test_the_slack_api_url_is_a_setting_ending_in_a_slash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str, used: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().slack_api_url == "https://slack.com/api/"  # Slack's own, when unset
    monkeypatch.setenv("SCRATCHBOT_SLACK_API_URL", given)
    assert load_settings().slack_api_url == used  # slack_sdk joins "chat.postMessage" onto it


@pytest.mark.parametrize("url", ["slack.com/api/", "ftp://slack.com/api/", "https:///api/", "https://h/api/?x=1"])
def test_a_slack_api_url_that_is_no_web_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_SLACK_API_URL", url)
    with pytest.raises(SettingsError, match=r"SCRATCHBOT_SLACK_API_URL: .* like Slack's own, https://slack.com/api/"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:abc/api/v10",  # a port that is no number
        "http://127.0.0.1:99999/api/v10",  # out of range
        "http://:80/api/v10",  # no host
        "http://user:password@proxy.internal/api/v10",  # credentials: the client's own would clash, and be logged
        "https://discord.com/api/v10?",
        "https://discord.com/api/v10#",
        "https://discord.com/\tapi/v10",
    ],
)
def test_a_platform_address_that_cannot_work_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SCRATCHBOT_DISCORD_API_URL", "SCRATCHBOT_SLACK_API_URL"):
        monkeypatch.setenv(name, url)
        with pytest.raises(SettingsError, match=rf"{name}: .* is not an API base URL like .*no credentials"):
            load_settings()
        monkeypatch.delenv(name)


@pytest.mark.parametrize("token", [" ", "abc def", "token\n"])
def test_a_token_with_spaces_or_control_characters_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_DISCORD_TOKEN", token)
    with pytest.raises(SettingsError, match="SCRATCHBOT_DISCORD_TOKEN: contains spaces or control characters"):
        load_settings()


def test_a_tenant_share_above_what_the_bot_accepts_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_TENANT_MAX_ACTIVE", "73")
    with pytest.raises(SettingsError, match=r"more than the bot accepts at once .* = 72\), .*set at most 72"):
        load_settings()
    monkeypatch.setenv("SCRATCHBOT_TENANT_MAX_ACTIVE", "72")
    assert load_settings().tenant_share == 72
