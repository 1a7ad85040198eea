"""`scratchbot db upgrade` as an operator meets it: a fresh install, a second run, and the mistakes they can make."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.cli.main import main
from storage.db import sqlite_url
from storage.migrate import head_revision


def test_db_upgrade_creates_the_default_sqlite_file_under_data(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert out == f"database {tmp_path / 'data' / 'scratchbot.db'} upgraded from empty to {head_revision()}\n"
    assert (tmp_path / "data" / "scratchbot.db").is_file()

    assert main(["db", "upgrade"]) == 0
    assert "already at" in capsys.readouterr().out


def test_db_upgrade_takes_a_database_url(tmp_path: Path, capsys) -> None:
    path = tmp_path / "elsewhere" / "bot.db"
    assert main(["db", "upgrade", "--database-url", sqlite_url(path)]) == 0
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/bot", "is not supported; use SQLite"),
        ("postgresql+asyncpg://postgres@127.0.0.1:1/nothing", "cannot connect to the database"),
    ],
)
def test_db_upgrade_reports_a_bad_url_in_one_line(url: str, message: str, capsys) -> None:
    assert main(["db", "upgrade", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_db_upgrade_refuses_a_database_from_a_newer_scratchbot(tmp_path: Path, capsys) -> None:
    url = sqlite_url(tmp_path / "bot.db")
    assert main(["db", "upgrade", "--database-url", url]) == 0
    with sqlite3.connect(tmp_path / "bot.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0999_future'")

    assert main(["db", "upgrade", "--database-url", url]) == 2
    assert "Upgrade scratchbot" in capsys.readouterr().err


def test_db_upgrade_migrates_the_database_the_settings_name(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHBOT_DATA_DIR", str(tmp_path / "botdata"))
    assert main(["db", "upgrade"]) == 0
    assert str(tmp_path / "botdata" / "scratchbot.db") in capsys.readouterr().out
    assert (tmp_path / "botdata" / "scratchbot.db").is_file() and not (tmp_path / "data").exists()

    (tmp_path / ".env").write_text(f"SCRATCHBOT_DATABASE_URL={sqlite_url(tmp_path / 'from-dotenv.db')}\n")
    assert main(["db", "upgrade"]) == 0
    assert "from-dotenv.db upgraded from empty" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "from-dotenv.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)

    assert main(["db", "upgrade", "--database-url", sqlite_url(tmp_path / "flag.db")]) == 0  # the flag wins
    assert "flag.db upgraded" in capsys.readouterr().out


def test_db_upgrade_never_prints_the_password(capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCRATCHBOT_DATABASE_URL", "postgresql+asyncpg://bot:s3cret@127.0.0.1:1/nothing")
    monkeypatch.setenv("SCRATCHBOT_DATABASE_CONNECT_TIMEOUT_S", "1")
    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the database" in err and "s3cret" not in err


@pytest.mark.parametrize("command", [["db", "upgrade"], ["run"]])
@pytest.mark.parametrize(
    "url",
    ["postgresql+asyncpg//bot:s3cret@127.0.0.1/bot", "postgresql+asyncpg://bot:s3cret/bot"],  # no ':', no host
)
def test_a_url_that_cannot_be_parsed_is_reported_without_its_password(
    command: list[str], url: str, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SCRATCHBOT_DATABASE_URL", url)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchbot: error: cannot parse the database URL") and err.count("\n") == 1
    assert "s3cret" not in err and "bot:***" in err
    assert "postgresql+asyncpg://user:password@host:5432/dbname" in err


def test_a_hung_database_server_is_named_with_the_reason(capsys, monkeypatch) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("SCRATCHBOT_DATABASE_CONNECT_TIMEOUT_S", "0.5")
        assert main(["db", "upgrade", "--database-url", f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the database" in err and "did not answer in time" in err


def test_a_data_directory_that_cannot_be_used_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("SCRATCHBOT_DATA_DIR", str(tmp_path / "a-file" / "data"))  # cannot be created
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchbot: error: cannot use the data directory") and "SCRATCHBOT_DATA_DIR" in err
    assert err.count("\n") == 1


async def _an_admin_reloads_and_is_refused(url: str, checkpoints: Path) -> None:
    from bot.core.auth import AdminPolicy
    from bot.core.channel_settings import ChannelConfig
    from bot.core.conversation import ConversationManager, ManagerConfig
    from bot.core.messages import Incoming
    from bot.core.ratelimit import RateLimiter
    from llm.tokenizer import Tokenizer
    from storage.store import open_store
    from tests.bot.fakes import FakeGenerator, RecordingReply

    async with open_store(url) as store:
        manager = ConversationManager(
            store,
            FakeGenerator(),
            Tokenizer(),
            AdminPolicy({"discord": ["admin"]}),
            RateLimiter(10),
            checkpoints,
            ManagerConfig(defaults=ChannelConfig(100, 0.0, None, None, 10)),
        )
        for who in ("admin", "mallory"):
            incoming = Incoming("discord", "g1", "c1", who, text="next.safetensors", command="reload")
            await manager.handle(incoming, RecordingReply())


def test_audit_shows_what_admins_did_and_what_was_loaded(tmp_path: Path, capsys) -> None:
    import asyncio
    import json

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "next.safetensors").write_bytes(b"weights")
    url = sqlite_url(tmp_path / "bot.db")
    asyncio.run(_an_admin_reloads_and_is_refused(url, checkpoints))

    assert main(["audit", "--database-url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "mallory  checkpoint.reload next.safetensors  ok=False" in lines[0]
    assert "admin  checkpoint.reload next.safetensors  ok=True" in lines[1]  # newest first
    assert main(["audit", "--database-url", url, "--loads", "--json"]) == 0
    [load] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (load["name"], load["succeeded"], load["requested_by"]) == ("next.safetensors", True, "discord:admin")
    assert main(["audit", "--database-url", url, "--tenant", "elsewhere"]) == 0
    assert capsys.readouterr().out == "nothing recorded yet\n"


def test_audit_of_a_database_that_does_not_exist_says_so_and_creates_nothing(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "typo.db"
    assert main(["audit", "--database-url", sqlite_url(missing)]) == 2
    assert f"no database at {missing}" in capsys.readouterr().err
    assert not missing.exists()
