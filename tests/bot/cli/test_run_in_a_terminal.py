"""`scratchbot run` in a pseudo-terminal, as a newcomer meets it: type, see a streamed reply, /model, Ctrl-D."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect

from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=256, emb_dim=32, n_heads=4, n_layers=2)


def spawn(tmp_path: Path, **env: str) -> pexpect.spawn:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCRATCHBOT_")}
    full_env.update({"SCRATCHBOT_DATA_DIR": str(tmp_path / "data"), "SCRATCHBOT_PRECISION": "fp32"}, **env)
    return pexpect.spawn(
        sys.executable, ["-m", "bot.cli", "run"], cwd=str(tmp_path), env=full_env, encoding="utf-8", timeout=120
    )


def test_chat_in_the_terminal(tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=3), checkpoint)
    child = spawn(tmp_path, SCRATCHBOT_CHECKPOINT=str(checkpoint), SCRATCHBOT_MAX_NEW_TOKENS="12")
    try:
        child.expect("chatting with tiny.safetensors")
        child.expect_exact("you> ")
        child.sendline("Hello there, who are you?")
        child.expect_exact("bot> ")
        child.expect_exact("you> ")
        answer = child.before.strip()
        assert answer  # a random model says something: the streamed text arrived
        child.sendline("/model")
        child.expect(r"Model: tiny\.safetensors \(sha256 [0-9a-f]{12}")
        child.expect_exact("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "data" / "scratchbot.db").exists()


def type_then_read_what_was_stored(tmp_path: Path, type_it: Callable[[pexpect.spawn], None]) -> list[str]:
    """Start the terminal chat, let ``type_it`` type one message, wait for the answer, quit; the user turns stored."""
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=3), checkpoint)
    child = spawn(tmp_path, SCRATCHBOT_CHECKPOINT=str(checkpoint), SCRATCHBOT_MAX_NEW_TOKENS="4")
    try:
        type_it(child)
        child.expect_exact("bot> ", timeout=120)
        child.expect_exact("you> ", timeout=120)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    with sqlite3.connect(tmp_path / "data" / "scratchbot.db") as db:
        return [text for (text,) in db.execute("SELECT text FROM messages WHERE role = 'user'")]


def test_a_paste_longer_than_the_terminals_line_limit_is_read_whole(tmp_path: Path) -> None:
    """A terminal's own line editing keeps 4,095 bytes of a line and drops the rest without a word."""
    paste = " ".join(f"word{i}" for i in range(1500))  # about 10,000 characters

    def type_it(child: pexpect.spawn) -> None:
        child.expect_exact("you> ")
        for start in range(0, len(paste), 500):  # as a terminal delivers a paste: in pieces
            child.send(paste[start : start + 500])
        child.sendline("")

    assert type_then_read_what_was_stored(tmp_path, type_it) == [paste]


def test_a_multi_line_paste_is_one_message(tmp_path: Path) -> None:
    def type_it(child: pexpect.spawn) -> None:
        child.expect_exact("\x1b[?2004h")  # the terminal is asked to mark pastes (it only does when asked)
        child.expect_exact("you> ")
        # What a terminal then sends for a paste of three lines.
        child.send("\x1b[200~Summarize this:\rfirst line\rsecond line\x1b[201~")
        child.send("\r")

    assert type_then_read_what_was_stored(tmp_path, type_it) == ["Summarize this:\nfirst line\nsecond line"]
