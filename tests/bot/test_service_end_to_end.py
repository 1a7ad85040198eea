"""The core with a small real model behind the real worker thread: load, concurrency, reloads under traffic,
and the console adapter driven programmatically."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path

import pytest

from bot.adapters.console import ConsoleAdapter
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import BUSY, FAILED, ConversationManager, ManagerConfig
from bot.core.messages import Incoming
from bot.core.ratelimit import RateLimiter
from bot.core.user_commands import forgotten
from bot.inference.local import LocalGenerator
from llm.checkpoints.common import file_sha256
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.tokenizer import Tokenizer
from storage.records import ConversationKey, Role
from storage.store import Store
from tests.bot.fakes import RecordingReply
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=256, emb_dim=32, n_heads=4, n_layers=2)
DEFAULTS = ChannelConfig(max_new_tokens=16, temperature=0.0, top_k=None, top_p=None, history_messages=10)
TOKENIZER = Tokenizer()


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    save_checkpoint(make_model(CONFIG, seed=1), directory / "first.safetensors")
    save_checkpoint(make_model(CONFIG, seed=2), directory / "second.safetensors")
    (directory / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return directory


async def make_manager(store: Store, checkpoints: Path, *, queue_size: int = 64, max_batch: int = 4):
    loaded = load_checkpoint(checkpoints / "first.safetensors")
    generator = LocalGenerator(
        loaded, TOKENIZER, name="first.safetensors", precision="fp32", max_batch=max_batch, queue_size=queue_size
    )
    await generator.start()
    manager = ConversationManager(
        store,
        generator,
        TOKENIZER,
        AdminPolicy({}),
        RateLimiter(1000),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, request_timeout_s=60),
    )
    return manager, generator


def chat(i: int, **changes: object) -> Incoming:
    base = Incoming(
        platform="console",
        tenant="t",
        channel=f"c{i % 7}",
        author_id=f"user{i}",
        text=f"Question {i}?",
        message_id=f"msg-{i}",
    )
    return replace(base, **changes)


async def test_fifty_concurrent_chats_are_answered_or_told_busy_and_nothing_is_lost(store, checkpoints) -> None:
    manager, generator = await make_manager(store, checkpoints, queue_size=20, max_batch=4)
    try:
        replies = [RecordingReply() for _ in range(50)]
        await asyncio.wait_for(asyncio.gather(*(manager.handle(chat(i), replies[i]) for i in range(50))), timeout=240)
    finally:
        await generator.close(5)
    answered = [r for r in replies if r.streamed]
    busy = [r for r in replies if r.sent == [BUSY]]
    assert len(answered) + len(busy) == 50 and answered
    assert not any(FAILED in r.sent for r in replies)
    stored = []
    for channel in range(7):
        stored += await store.recent_history(ConversationKey("console", "t", f"c{channel}"), limit=200)
    assert sorted(m.text for m in stored if m.role is Role.USER) == sorted(f"Question {i}?" for i in range(50))
    assert len([m for m in stored if m.role is Role.ASSISTANT]) == len(answered)


async def test_reload_under_traffic_fails_no_request_and_later_ones_use_the_new_model(store, checkpoints) -> None:
    manager, generator = await make_manager(store, checkpoints)
    second_sha = file_sha256(checkpoints / "second.safetensors")
    try:
        replies = [RecordingReply() for _ in range(12)]
        traffic = [asyncio.create_task(manager.handle(chat(i), replies[i])) for i in range(12)]
        await asyncio.sleep(0.05)
        admin = RecordingReply()
        await manager.handle(chat(99, command="reload", text="second.safetensors", message_id=None), admin)
        await asyncio.wait_for(asyncio.gather(*traffic), timeout=120)
        assert admin.sent[-1].startswith("Now serving second.safetensors")
        assert all(r.streamed and not r.sent for r in replies)  # nobody saw an error
        later = RecordingReply()
        await manager.handle(chat(100, channel="after"), later)
    finally:
        await generator.close(5)
    after = await store.recent_history(ConversationKey("console", "t", "after"))
    assert after[-1].generation is not None and after[-1].generation.checkpoint_sha256 == second_sha
    assert generator.info.name == "second.safetensors"


async def test_a_corrupt_checkpoint_or_an_escaping_name_is_refused_and_the_old_model_serves(store, checkpoints) -> None:
    manager, generator = await make_manager(store, checkpoints)
    try:
        for name in ("corrupt.safetensors", "../../etc/passwd"):
            reply = RecordingReply()
            await manager.handle(chat(1, command="reload", text=name, message_id=None), reply)
            assert "still serving first.safetensors" in reply.sent[-1] or reply.sent[-1].startswith("Reload refused")
            assert generator.info.name == "first.safetensors"
        works = RecordingReply()
        await manager.handle(chat(2), works)
        assert works.streamed and not works.sent
    finally:
        await generator.close(5)
    loads = await store.recent_checkpoint_loads()
    assert [load.succeeded for load in loads] == [False]  # the corrupt file was tried; the escaping name never was


async def test_the_console_adapter_chats_and_runs_commands(store, checkpoints) -> None:
    manager, generator = await make_manager(store, checkpoints)
    stdin = io.StringIO("Hello there\n/model\n/translate French Good night\n/forget\n")
    stdout = io.StringIO()
    try:
        await asyncio.wait_for(ConsoleAdapter(manager, stdin=stdin, stdout=stdout).run(), timeout=120)
    finally:
        await generator.close(5)
    out = stdout.getvalue()
    assert out.startswith("scratchbot: chatting with first.safetensors")
    assert out.count("you> ") == 5  # four lines, then end of input
    assert "bot> Model: first.safetensors" in out
    assert "bot> " + forgotten(2) in out  # the terminal conversation, whole
