"""ConversationManager: what a user sees for each command, and what ends up stored and audited."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.core.admin import NOT_ADMIN
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig
from bot.core.conversation import BUSY, CHAT_OFF, FAILED_SAVED, TENANT_BUSY, ConversationManager, ManagerConfig
from bot.core.messages import Incoming, ReadRefused, ReplyRefused, TranscriptLine
from bot.core.ratelimit import RateLimiter
from bot.core.user_commands import HELP, forgotten
from bot.inference.generator import GenerationTimeout, GeneratorBusy, TenantBusy
from llm.prompts import RESPONSE_STOPS, render_prompt
from llm.tokenizer import Tokenizer
from storage.records import ConversationKey, Role
from storage.store import Store
from tests.bot.fakes import SHA, FakeGenerator, RecordingReply

TOKENIZER = Tokenizer()
DEFAULTS = ChannelConfig(max_new_tokens=100, temperature=0.0, top_k=None, top_p=None, history_messages=20)
MSG = Incoming(platform="discord", tenant="g1", channel="c1", author_id="u1", text="What is 2+2?", message_id="m1")
KEY = ConversationKey("discord", "g1", "c1")


@pytest.fixture
def generator() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def manager(store: Store, generator: FakeGenerator, checkpoints: Path) -> ConversationManager:
    return ConversationManager(
        store,
        generator,
        TOKENIZER,
        AdminPolicy({"discord": ["admin"]}),
        RateLimiter(5),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS, request_timeout_s=30, summarize_default=50),
    )


async def ask(manager: ConversationManager, incoming: Incoming = MSG) -> RecordingReply:
    reply = RecordingReply()
    await manager.handle(incoming, reply)
    return reply


async def test_chat_streams_the_answer_and_stores_both_turns(manager, generator, store) -> None:
    reply = await ask(manager)
    assert reply.streamed == ["The answer is 4."]  # leading whitespace of the model's first token is dropped
    assert generator.prompts[0] == TOKENIZER.encode(render_prompt("What is 2+2?"))
    assert generator.params[0].stop == RESPONSE_STOPS and generator.params[0].max_new_tokens == 100
    history = await store.recent_history(KEY)
    assert [(m.role, m.text) for m in history] == [(Role.USER, "What is 2+2?"), (Role.ASSISTANT, "The answer is 4.")]
    assert history[0].platform_message_id == "m1"
    generation = history[1].generation
    assert generation is not None and generation.checkpoint_name == "fake.safetensors"
    assert generation.checkpoint_sha256 == SHA and generation.sampling["max_new_tokens"] == 100


async def test_earlier_turns_go_into_the_next_prompt(manager, generator) -> None:
    await ask(manager)
    await ask(manager, replace(MSG, text="And 3+3?", message_id="m2"))
    prompt = TOKENIZER.decode(generator.prompts[1])
    assert "### Instruction:\nWhat is 2+2?\n\n### Response:\nThe answer is 4." in prompt
    assert prompt.endswith("### Instruction:\nAnd 3+3?\n\n### Response:\n")


async def test_conversations_are_kept_apart_by_tenant_channel_and_thread(manager, generator) -> None:
    await ask(manager)
    for other in (replace(MSG, tenant="g2"), replace(MSG, thread="t1"), replace(MSG, channel="c2")):
        await ask(manager, replace(other, text="Hi", message_id=f"x-{other.tenant}{other.channel}{other.thread}"))
        assert "2+2" not in TOKENIZER.decode(generator.prompts[-1])


async def test_a_redelivered_message_is_answered_once(manager, generator, store) -> None:
    await ask(manager)
    again = await ask(manager)
    assert again.streamed == [] and again.sent == []
    assert len(generator.prompts) == 1 and len(await store.recent_history(KEY)) == 2


async def test_a_fast_sender_is_told_to_wait_and_others_are_not_affected(manager, generator, store) -> None:
    replies = [await ask(manager, replace(MSG, text=f"Question {i}", message_id=f"m{i}")) for i in range(6)]
    assert all(r.streamed for r in replies[:5])
    assert "please wait" in replies[5].sent[0] and "send it again" in replies[5].sent[0] and not replies[5].streamed
    stored = [m.text for m in await store.recent_history(KEY) if m.role is Role.USER]
    assert stored == [f"Question {i}" for i in range(5)]  # the one not answered is not kept either
    assert (await ask(manager, replace(MSG, author_id="u2", message_id="other"))).streamed


async def test_a_redelivered_message_does_not_count_against_the_rate_limit(manager, generator) -> None:
    for i in range(4):
        await ask(manager, replace(MSG, message_id=f"m{i}"))
    for _ in range(3):
        await ask(manager, replace(MSG, message_id="m0"))  # the platform delivered it again
    assert (await ask(manager, replace(MSG, message_id="m4"))).streamed  # the fifth message the user sent


async def test_the_bot_applications_owner_is_not_rate_limited(manager, generator) -> None:
    for i in range(8):
        assert (await ask(manager, replace(MSG, author_is_owner=True, message_id=f"o{i}"))).streamed


async def test_busy_and_timeouts_are_explained_and_the_message_is_kept(manager, generator, store) -> None:
    generator.busy = True
    assert (await ask(manager)).sent == [BUSY]
    generator.busy = False
    generator.fail_with = GenerationTimeout("deadline")
    assert "took too long" in (await ask(manager, replace(MSG, message_id="m2"))).sent[0]
    generator.fail_with = RuntimeError("boom")
    assert (await ask(manager, replace(MSG, message_id="m3"))).sent == [FAILED_SAVED]
    texts = [m.text for m in await store.recent_history(KEY)]
    assert texts == ["What is 2+2?"] * 3  # every user message is stored, no half answers


class ExpiredReply(RecordingReply):
    """A platform that stops taking the answer for good after its first words (an expired interaction)."""

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        async for _ in deltas:
            raise ReplyRefused("the interaction has expired")
        return ""


async def test_an_answer_the_platform_no_longer_takes_ends_without_a_notice_or_an_error(
    manager, store, caplog: pytest.LogCaptureFixture
) -> None:
    reply = ExpiredReply()
    await manager.handle(MSG, reply)
    assert reply.sent == []  # no "something went wrong": nowhere to show it
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # the adapter said why, once
    assert [m.text for m in await store.recent_history(KEY)] == ["What is 2+2?"]  # the question kept, no half answer


async def test_busy_raised_at_submit_is_a_busy_message(manager, generator) -> None:
    generator.fail_with = GeneratorBusy("full")
    assert (await ask(manager)).sent == [BUSY]


async def test_each_request_counts_against_its_tenants_share_of_the_model(manager, generator) -> None:
    await ask(manager)
    await ask(manager, replace(MSG, command="translate", text="German hello", message_id=None))
    assert generator.tenants == ["discord:g1", "discord:g1"]
    generator.fail_with = TenantBusy("discord:g1 has its share")
    assert (await ask(manager, replace(MSG, message_id="m2"))).sent == [TENANT_BUSY]  # not "the bot is busy"


def platform_reading(*lines: TranscriptLine, reads: list[int] | None = None):
    """A transcript reader as an adapter gives one; ``reads`` records the counts the core asked for."""

    async def read(count: int) -> tuple[TranscriptLine, ...] | None:
        if reads is not None:
            reads.append(count)
        return lines or None

    return read


async def test_summarize_uses_the_adapters_transcript_or_the_stored_history(manager, generator) -> None:
    reads: list[int] = []
    transcript = platform_reading(
        TranscriptLine("ann", "Let's ship on Friday."), TranscriptLine("bob", "Agreed, after the tests."), reads=reads
    )
    reply = await ask(manager, replace(MSG, command="summarize", text="", transcript=transcript))
    prompt = TOKENIZER.decode(generator.prompts[-1])
    assert "### Instruction:\nSummarize the following conversation" in prompt
    assert "### Input:\nann: Let's ship on Friday.\nbob: Agreed, after the tests." in prompt
    assert reply.streamed == ["The answer is 4."] and reads == [50]  # the one default count, asked of the platform
    await ask(manager)
    await ask(manager, replace(MSG, command="summarize", text="10", transcript=platform_reading()))  # shows no text
    assert "u1: What is 2+2?\nbot: The answer is 4." in TOKENIZER.decode(generator.prompts[-1])


async def test_summarize_refuses_a_bad_count_and_an_empty_channel_without_reading_the_platform(manager) -> None:
    reads: list[int] = []
    bad = replace(MSG, command="summarize", text="100000", transcript=platform_reading(reads=reads))
    assert "Usage: summarize" in (await ask(manager, bad)).sent[0]
    assert reads == []  # a Slack channel is not read 100,000 messages deep for a refusal
    empty = await ask(manager, replace(MSG, command="summarize", text="", channel="quiet"))
    assert empty.sent == ["There is nothing here to summarize yet."]


async def test_a_platform_that_refuses_the_read_has_told_the_user_and_nothing_more_is_said(manager) -> None:
    async def refused(count: int) -> None:
        raise ReadRefused("no access")

    reply = await ask(manager, replace(MSG, command="summarize", text="", transcript=refused))
    assert reply.sent == [] and reply.streamed == []


async def test_translate_puts_the_text_in_the_input(manager, generator) -> None:
    await ask(manager, replace(MSG, command="translate", text="German Good morning, friends!"))
    assert TOKENIZER.decode(generator.prompts[-1]) == render_prompt(
        "Translate the following text into German.", "Good morning, friends!"
    )
    assert "Usage: translate" in (await ask(manager, replace(MSG, command="translate", text="German"))).sent[0]


async def test_translate_takes_a_quoted_language_of_several_words(manager, generator) -> None:
    await ask(manager, replace(MSG, command="translate", text='"Brazilian Portuguese" Good morning'))
    assert TOKENIZER.decode(generator.prompts[-1]) == render_prompt(
        "Translate the following text into Brazilian Portuguese.", "Good morning"
    )
    unclosed = await ask(manager, replace(MSG, command="translate", text='"Brazilian Portuguese Good morning'))
    assert 'Quote a language of several words: translate "Brazilian Portuguese"' in unclosed.sent[0]


async def test_model_reports_checkpoint_and_load(manager) -> None:
    text = (await ask(manager, replace(MSG, command="model"))).sent[0]
    assert "fake.safetensors" in text and SHA[:12] in text and "1,234 parameters" in text
    assert "12.5 tokens/s" in text and "0 waiting" in text


async def test_model_says_idle_rather_than_a_speed_of_zero(manager, generator) -> None:
    generator.recent_tokens_per_second = 0.0
    text = (await ask(manager, replace(MSG, command="model"))).sent[0]
    assert "no answers generated recently" in text and "tokens/s" not in text


async def test_forget_deletes_the_callers_messages(manager, store) -> None:
    await ask(manager)
    reply = await ask(manager, replace(MSG, command="forget", text=""))
    assert reply.sent == [forgotten(1)]
    assert [m for m in await store.recent_history(KEY) if m.author_id == "u1"] == []


async def test_settings_are_admin_only_validated_stored_audited_and_used(manager, generator, store) -> None:
    shown = await ask(manager, replace(MSG, command="settings", text=""))
    assert "temperature = 0.0 (default)" in shown.sent[0]
    refused = await ask(manager, replace(MSG, command="settings", text="temperature 0.8"))
    assert refused.sent == [NOT_ADMIN]
    admin = replace(MSG, author_id="admin", command="settings")
    assert "Not changed: temperature" in (await ask(manager, replace(admin, text="temperature 9"))).sent[0]
    changed = await ask(manager, replace(admin, text="temperature 0.8"))
    assert changed.sent == ["temperature is now 0.8 in this channel."]
    await ask(manager, replace(MSG, message_id="later"))
    assert generator.params[-1].temperature == 0.8
    actions = [(a.actor_id, a.action, a.detail.get("ok")) for a in await store.audit_entries()]
    assert ("admin", "channel.settings", True) in actions and ("u1", "channel.settings", False) in actions


async def test_a_channel_switched_off_gets_no_chat_answers(manager, generator) -> None:
    await ask(manager, replace(MSG, author_id="admin", command="settings", text="enabled off"))
    reply = await ask(manager, replace(MSG, message_id="m9"))
    assert reply.streamed == [] and reply.sent == [] and generator.prompts == []


async def test_reload_by_name_is_admin_only_and_audited(manager, generator, store) -> None:
    refused = await ask(manager, replace(MSG, command="reload", text="next.safetensors"))
    assert refused.sent == [NOT_ADMIN] and generator.info.name == "fake.safetensors"
    done = await ask(manager, replace(MSG, author_id="admin", command="reload", text="next.safetensors"))
    assert done.sent[-1].startswith("Now serving next.safetensors")
    loads = await store.recent_checkpoint_loads()
    assert loads[0].name == "next.safetensors" and loads[0].succeeded and loads[0].requested_by == "discord:admin"
    actions = [(a.actor_id, a.action, a.detail.get("ok")) for a in await store.audit_entries()]
    assert ("u1", "checkpoint.reload", False) in actions and ("admin", "checkpoint.reload", True) in actions


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "missing.pth"])
async def test_reload_refuses_names_outside_the_directory(manager, generator, store, name: str) -> None:
    reply = await ask(manager, replace(MSG, author_id="admin", command="reload", text=name))
    assert reply.sent[0].startswith("Reload refused:") and generator.info.name == "fake.safetensors"
    audit = (await store.audit_entries())[0]
    assert audit.action == "checkpoint.reload" and audit.detail["ok"] is False


async def test_a_failed_reload_keeps_the_old_model_and_says_why(manager, generator, store) -> None:
    generator.reload_error = "checkpoint next.safetensors is corrupt"
    reply = await ask(manager, replace(MSG, author_id="admin", command="reload", text="next.safetensors"))
    assert reply.sent[-1] == "Reload failed, still serving fake.safetensors: checkpoint next.safetensors is corrupt"
    loads = await store.recent_checkpoint_loads()
    assert not loads[0].succeeded and "corrupt" in loads[0].detail


async def test_help_and_empty_messages(manager) -> None:
    assert (await ask(manager, replace(MSG, command="help", text=""))).sent == [HELP]
    assert (await ask(manager, replace(MSG, text="   ", message_id="e"))).sent == [HELP]


async def test_platform_events_delete_purge_and_deduplicate(manager, store) -> None:
    await ask(manager)
    other_guild = replace(MSG, tenant="g2", message_id="m9")
    await ask(manager, other_guild)
    assert await manager.messages_deleted("discord", "g1", "c1", ["m1", "unknown"]) == 1
    assert [m.role for m in await store.recent_history(KEY)] == [Role.ASSISTANT]  # the user's copy went

    in_thread = replace(MSG, thread="t1", message_id="m7")
    await ask(manager, in_thread)
    assert await manager.channel_deleted("discord", "g1", "c1", "t1", reason="thread deleted") == 2  # question, answer
    assert await store.recent_history(ConversationKey("discord", "g1", "c1", "t1")) == []
    assert await store.recent_history(KEY) != []
    assert await manager.channel_deleted("discord", "g1", "c1", reason="channel deleted") == 1  # the answer left
    assert await store.recent_history(KEY) == []
    audits = [(a.action, a.target, a.detail["reason"]) for a in await store.audit_entries(tenant="g1")]
    assert ("thread.purge", "t1", "thread deleted") in audits and ("channel.purge", "c1", "channel deleted") in audits

    assert await manager.tenant_removed("discord", "g2", "guild removed") == 2
    assert await store.recent_history(ConversationKey("discord", "g2", "c1")) == []
    audit = (await store.audit_entries(tenant="g2"))[0]
    assert (audit.action, audit.actor_id, audit.detail["reason"]) == ("tenant.purge", "platform", "guild removed")

    assert await manager.first_delivery("slack", "Ev1") is True
    assert await manager.first_delivery("slack", "Ev1") is False


async def test_checkpoint_names_and_admin_check_for_adapters(manager) -> None:
    assert manager.checkpoint_names() == ["next.safetensors"]
    assert manager.is_admin(replace(MSG, author_id="admin"))
    assert manager.is_admin(replace(MSG, author_is_owner=True))
    assert not manager.is_admin(MSG)


async def test_a_redelivery_of_an_answered_message_is_not_told_to_wait(manager, generator) -> None:
    for i in range(5):
        await ask(manager, replace(MSG, message_id=f"m{i}"))
    again = await ask(manager, replace(MSG, message_id="m0"))  # a gateway replay, while the user is at the limit
    assert again.sent == [] and again.streamed == []
    assert "please wait" in (await ask(manager, replace(MSG, message_id="m5"))).sent[0]  # a new one is limited


async def test_an_empty_answer_is_not_stored_as_a_turn(store, checkpoints) -> None:
    manager = ConversationManager(
        store,
        FakeGenerator("   "),
        TOKENIZER,
        AdminPolicy({}),
        RateLimiter(5),
        checkpoints,
        ManagerConfig(defaults=DEFAULTS),
    )
    await ask(manager)
    assert [m.role for m in await store.recent_history(KEY)] == [Role.USER]


async def test_chat_switched_off_says_so_in_a_conversation_of_two(manager, generator) -> None:
    await ask(manager, replace(MSG, author_id="admin", command="settings", text="enabled off"))
    dm = await ask(manager, replace(MSG, is_dm=True, message_id="dm1"))
    assert dm.sent == [CHAT_OFF] and generator.prompts == []
    shown = await ask(manager, replace(MSG, author_id="admin", command="settings", text="enabled on"))
    assert shown.sent == ["enabled is now on in this channel."]
