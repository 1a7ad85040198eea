"""`scratchbot db upgrade` as an operator meets it: a fresh install, a second run, and the mistakes they can make."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.cli import main
from storage.db import sqlite_url
from storage.migrate import head_revision


def test_db_upgrade_creates_the_default_sqlite_file_under_data(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out == f"database upgraded from empty to {head_revision()}\n"
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
