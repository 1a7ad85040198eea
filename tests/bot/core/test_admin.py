"""Admin commands that cannot break the bot: answer lengths checked against the serving model (on `settings` and
on every reload), arguments and audit text of bounded size, and every refusal audited."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.core.admin import NOT_ADMIN
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import ConversationManager, ManagerConfig
from bot.core.messages import Incoming
from bot.core.ratelimit import RateLimiter
from llm.prompts import max_new_tokens_limit
from llm.tokenizer import Tokenizer
from storage.statements import AUDIT_TEXT_CHARS
from storage.store import Store
from tests.bot.fakes import FakeGenerator, RecordingReply

TOKENIZER = Tokenizer()
LIMIT_512 = max_new_tokens_limit(512, TOKENIZER)  # 444: a 512-token context keeps 68 for the prompt
DEFAULTS = ChannelConfig(max_new_tokens=256, temperature=0.0, top_k=None, top_p=None, history_messages=20)
ADMIN = Incoming(platform="discord", tenant="g1", channel="c1", author_id="admin", command="settings")
USER = Incoming(platform="discord", tenant="g1", channel="c1", author_id="u1", text="Hi", message_id="m1")


def build(store: Store, generator: FakeGenerator, checkpoints: Path, defaults: ChannelConfig = DEFAULTS):
    return ConversationManager(
        store,
        generator,
        TOKENIZER,
        AdminPolicy({"discord": ["admin"]}),
        RateLimiter(100),
        checkpoints,
        ManagerConfig(defaults=defaults),
    )


async def ask(manager: ConversationManager, incoming: Incoming) -> RecordingReply:
    reply = RecordingReply()
    await manager.handle(incoming, reply)
    return reply


@pytest.fixture
def small_model() -> FakeGenerator:
    return FakeGenerator(context_length=512)  # the bundled demo model's context


async def test_an_answer_length_the_model_cannot_hold_is_refused_where_it_is_set(
    store: Store, small_model: FakeGenerator, checkpoints: Path
) -> None:
    manager = build(store, small_model, checkpoints)
    for wrong in ("512", "1024", str(LIMIT_512 + 1), "0"):
        reply = await ask(manager, replace(ADMIN, text=f"max_new_tokens {wrong}"))
        assert reply.sent == [
            f"Not changed: max_new_tokens: {wrong} is out of range: choose 1 to {LIMIT_512} for the model now serving "
            "(fake.safetensors): its context of 512 tokens must also hold the prompt"
        ]
    assert await store.get_channel_settings(platform="discord", tenant="g1", channel="c1") == {}
    refusals = [a for a in await store.audit_entries() if a.action == "channel.settings"]
    assert len(refusals) == 4 and all(a.detail["ok"] is False and "out of range" in a.detail["error"] for a in refusals)
    accepted = await ask(manager, replace(ADMIN, text=f"max_new_tokens {LIMIT_512}"))
    assert accepted.sent == [f"max_new_tokens is now {LIMIT_512} in this channel."]
    assert (await ask(manager, USER)).streamed  # and the channel still answers
    assert small_model.params[-1].max_new_tokens == LIMIT_512


async def test_no_stored_value_can_make_a_channel_fail_every_message(
    store: Store, small_model: FakeGenerator, checkpoints: Path
) -> None:
    # Stored by an older version, or by another replica serving a bigger model.
    await store.update_channel_settings(
        platform="discord", tenant="g1", channel="c1", changes={"max_new_tokens": 1024}, updated_by="old"
    )
    manager = build(store, small_model, checkpoints, replace(DEFAULTS, max_new_tokens=1000))
    assert (await ask(manager, USER)).streamed == ["The answer is 4."]
    assert small_model.params[-1].max_new_tokens == LIMIT_512
    prompt_room = 512 - LIMIT_512
    assert len(small_model.prompts[-1]) <= prompt_room
    shown = await ask(manager, replace(USER, command="settings", text=""))
    assert f"max_new_tokens = {LIMIT_512}:" in shown.sent[0]
    for command, text in (("summarize", ""), ("translate", "German Good morning")):
        assert (await ask(manager, replace(USER, command=command, text=text, message_id=command))).streamed


async def test_a_reload_to_a_shorter_context_lowers_what_no_longer_fits_and_says_so(
    store: Store, checkpoints: Path
) -> None:
    generator = FakeGenerator(context_length=1024)
    manager = build(store, generator, checkpoints, replace(DEFAULTS, max_new_tokens=600))
    for channel, value in (("c1", "900"), ("c2", "300"), ("c3", "700")):
        assert "is now" in (await ask(manager, replace(ADMIN, channel=channel, text=f"max_new_tokens {value}"))).sent[0]
    generator._context_length = 512  # the checkpoint it reloads to has a context of 512 tokens
    reply = await ask(manager, replace(ADMIN, command="reload", text="next.safetensors"))
    assert reply.sent[-1] == (
        f"Now serving next.safetensors (sha256 {'cd' * 6}…, 999 parameters). Its context is 512 tokens, so answers "
        f"are at most {LIMIT_512} tokens: max_new_tokens was lowered to {LIMIT_512} in 2 channels; the service "
        f"default (600) is used as {LIMIT_512} while it serves."
    )
    stored = {
        channel: (await store.get_channel_settings(platform="discord", tenant="g1", channel=channel))["max_new_tokens"]
        for channel in ("c1", "c2", "c3")
    }
    assert stored == {"c1": LIMIT_512, "c2": 300, "c3": LIMIT_512}
    audit = next(a for a in await store.audit_entries() if a.action == "checkpoint.reload")
    assert audit.detail["ok"] is True and audit.detail["max_new_tokens_limit"] == LIMIT_512
    assert audit.detail["max_new_tokens_lowered_count"] == 2
    assert sorted(audit.detail["max_new_tokens_lowered"]) == ["discord/g1/c1 from 900", "discord/g1/c3 from 700"]
    await ask(manager, replace(USER, channel="c1"))
    assert generator.params[-1].max_new_tokens == LIMIT_512  # the cache did not keep the old value


async def test_a_reload_that_changes_nothing_says_nothing_more(store: Store, checkpoints: Path) -> None:
    manager = build(store, FakeGenerator(context_length=1024), checkpoints)
    reply = await ask(manager, replace(ADMIN, command="reload", text="next.safetensors"))
    assert reply.sent[-1].endswith("999 parameters).")


async def test_admin_arguments_and_audit_text_are_bounded(store: Store, checkpoints: Path) -> None:
    manager = build(store, FakeGenerator(), checkpoints)
    huge = "x" * 50_000
    for incoming in (
        replace(ADMIN, text=f"temperature {huge}"),
        replace(ADMIN, command="reload", text=huge),
        replace(USER, command="settings", text=f"temperature {huge}"),  # refused: not an admin, and audited
        replace(USER, command="reload", text=huge),
    ):
        reply = await ask(manager, incoming)
        assert all(len(text) < 500 for text in reply.sent), reply.sent
    for entry in await store.audit_entries():
        assert len(entry.target) <= AUDIT_TEXT_CHARS
        assert all(len(v) <= AUDIT_TEXT_CHARS for v in entry.detail.values() if isinstance(v, str))
    reloads = [a for a in await store.audit_entries() if a.action == "checkpoint.reload"]
    assert [a.detail.get("error") for a in reloads] == ["refused: not an admin", "name too long"]
    assert (await ask(manager, replace(USER, command="reload", text="x"))).sent == [NOT_ADMIN]


async def test_reloads_wait_their_turn_and_each_is_answered(store: Store, checkpoints: Path) -> None:
    import asyncio

    generator = FakeGenerator()
    generator.reload_hold = asyncio.Event()
    manager = build(store, generator, checkpoints)
    reload = replace(ADMIN, command="reload", text="next.safetensors")
    first = asyncio.create_task(ask(manager, reload))
    while not generator.reloads_running:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(ask(manager, replace(reload, author_id="admin")))
    await asyncio.sleep(0.05)
    generator.reload_hold.set()
    replies = await asyncio.gather(first, second)
    assert generator.most_reloads_at_once == 1  # one at a time, never refused
    assert replies[1].sent[0] == "A reload is already running; this one starts when it is done."
    assert all(r.sent[-1].startswith("Now serving next.safetensors") for r in replies)
