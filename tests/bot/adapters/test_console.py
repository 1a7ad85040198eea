"""The terminal chat as its user meets it: the operator, at a terminal, with the log one glance away."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from bot.adapters.console import HELP, ConsoleAdapter
from bot.adapters.streaming import EMPTY_ANSWER
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import FAILED_SAVED, ConversationManager, ManagerConfig
from bot.core.ratelimit import RateLimiter
from bot.core.user_commands import forgotten
from llm.tokenizer import Tokenizer
from storage.store import Store
from tests.bot.fakes import FakeGenerator

DEFAULTS = ChannelConfig(max_new_tokens=16, temperature=0.0, top_k=None, top_p=None, history_messages=10)
LOG = Path("data/scratchbot.log")


def build(store: Store, generator: FakeGenerator, checkpoints: Path, *, per_minute: int = 10) -> ConversationManager:
    return ConversationManager(
        store,
        generator,
        Tokenizer(),
        AdminPolicy({}),
        RateLimiter(per_minute),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, failure_note=f"Details are in {LOG}."),
    )


async def chat(manager: ConversationManager, typed: str | bytes) -> str:
    raw = typed if isinstance(typed, bytes) else typed.encode()
    stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8")  # what a pipe into `scratchbot run` looks like
    stdout = io.StringIO()
    await asyncio.wait_for(ConsoleAdapter(manager, stdin=stdin, stdout=stdout, log_path=LOG).run(), 60)
    return stdout.getvalue()


async def test_the_banner_and_help_speak_of_the_terminal_and_say_where_the_log_is(store, checkpoints) -> None:
    out = await chat(build(store, FakeGenerator(), checkpoints), "/help\n")
    assert "The log is data/scratchbot.log." in out.splitlines()[0]
    assert f"bot> {HELP} The log is data/scratchbot.log." in out
    assert "Mention me" not in out and "Ctrl-D quits" in HELP


async def test_the_operator_is_not_rate_limited(store, checkpoints) -> None:
    generator = FakeGenerator()
    out = await chat(build(store, generator, checkpoints, per_minute=1), "".join(f"Question {i}\n" for i in range(5)))
    assert len(generator.prompts) == 5 and "please wait" not in out


async def test_forget_deletes_the_terminal_conversation_whole(store, checkpoints) -> None:
    manager = build(store, FakeGenerator(), checkpoints)
    out = await chat(manager, "Hello\nHow are you?\n/forget\n")
    assert "bot> " + forgotten(4) in out  # two questions and the bot's two answers
    again = await chat(manager, "/summarize\n")
    assert "There is nothing here to summarize yet." in again


async def test_an_error_says_where_the_log_is(store, checkpoints) -> None:
    generator = FakeGenerator()
    generator.fail_with = RuntimeError("boom")
    out = await chat(build(store, generator, checkpoints), "Hello\n")
    assert f"bot> {FAILED_SAVED} Details are in data/scratchbot.log." in out


async def test_bytes_that_are_not_utf8_are_refused_and_the_chat_goes_on(store, checkpoints) -> None:
    generator = FakeGenerator()
    out = await chat(build(store, generator, checkpoints), b"caf\xe9 au lait\nStill here?\n")
    assert "I can't keep your message: it contains a byte that is not UTF-8 (0xE9); check your terminal" in out
    assert len(generator.prompts) == 1 and out.count("you> ") == 3  # the chat went on to the next line and the end


async def test_a_mistyped_command_is_not_sent_to_the_model(store, checkpoints) -> None:
    generator = FakeGenerator()
    out = await chat(build(store, generator, checkpoints), "/sumarize\n/\n/etc/hosts is what?\n")
    assert out.count("bot> There is no command /sumarize; /summarize") == 1 and "There is no command /;" in out
    assert len(generator.prompts) == 1  # the path-like question went to the model as chat


async def test_an_answer_of_nothing_is_said_to_be_nothing(store, checkpoints) -> None:
    out = await chat(build(store, FakeGenerator("  "), checkpoints), "Hello\n")
    assert f"bot> {EMPTY_ANSWER}\n" in out
