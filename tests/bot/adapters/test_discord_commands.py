"""Slash commands and message context menus through the real discord.py client and a fake Discord.

Each command defers first (callback type 5: Discord wants an answer within 3 s) and then edits the deferred
response, following up when the answer is longer than one message. Admin rights come from the application's
owners (as Discord reports them) and configured ids, never from guild permissions.
"""

from __future__ import annotations

import pytest

from bot.adapters.discord import MESSAGE_LIMIT
from bot.core.admin import NOT_ADMIN
from bot.core.user_commands import forgotten
from llm.tokenizer import Tokenizer
from storage.records import ConversationKey, dm_tenant
from tests.bot.adapters.discord_fixtures import (  # noqa: F401  (fixtures, registered under short names)
    SUMMARIZE_DEFAULT,
    Bot,
    application_fixture,
    bot_fixture,
    checkpoints_fixture,
    generator_fixture,
    manager_fixture,
    wait_until,
)
from tests.fake_discord import payloads as p

TOKENIZER = Tokenizer()
EPHEMERAL = 64  # message flag


def finished(count: int = 1):
    """Done when ``count`` messages show text and none still has the streaming cursor."""
    return lambda answers: len(answers) >= count and all(a and not a.endswith("…") for a in answers)


def deferred(bot: Bot) -> list[dict]:
    return [c.json for c in bot.discord.calls_to("POST", r"/interactions/\d+/[^/]+/callback")]


def last_prompt(bot: Bot) -> str:
    return TOKENIZER.decode(bot.generator.prompts[-1])


async def test_the_commands_are_published_at_startup(bot: Bot) -> None:
    published = {(c["name"], c["type"]) for c in bot.discord.commands}
    assert published == {
        ("summarize", 1),
        ("translate", 1),
        ("model", 1),
        ("forget", 1),
        ("reload", 1),
        ("Summarize thread", 3),
        ("Translate message", 3),
    }
    reload = next(c for c in bot.discord.commands if c["name"] == "reload")
    assert reload["options"][0]["autocomplete"] is True


async def test_each_slash_command_defers_then_answers_in_the_deferred_response(bot: Bot) -> None:
    for text in ("first words of the day", "second thoughts", "third time lucky"):
        await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.ALICE, text))
    cases = [
        (
            p.slash("summarize", count=2),
            lambda prompt: "Alice: second thoughts\nAlice: third time lucky" in prompt and "first words" not in prompt,
        ),
        (
            p.slash("translate", language="Brazilian Portuguese", text="Good morning"),
            lambda prompt: "into Brazilian Portuguese." in prompt and "Good morning" in prompt,
        ),
        (p.slash("model"), None),
        (p.slash("forget"), None),
    ]
    for data, prompt_ok in cases:
        token = await bot.interact(data)
        [answer] = await bot.command_answered(token, finished())
        assert deferred(bot)[-1]["type"] == 5, data["name"]
        original = bot.discord.answers_for(token)[0]
        assert original.payload["original"] and original.contents[0] == ""  # "thinking…" until edited
        if prompt_ok is not None:
            assert answer == "The answer is 4." and prompt_ok(last_prompt(bot)), data["name"]
    assert answer.startswith("Done: I deleted")  # /forget answers privately, as does /model
    assert [d.get("data", {}).get("flags", 0) & EPHEMERAL for d in deferred(bot)] == [0, 0, EPHEMERAL, EPHEMERAL]


async def test_a_long_command_result_continues_in_follow_ups(bot: Bot) -> None:
    answer = " ".join(f"Sentence number {i} of a long summary." for i in range(150))  # ~6,000 characters
    bot.generator.answer = " " + answer
    await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.ALICE, "something to summarize"))
    token = await bot.interact(p.slash("summarize"))
    await wait_until(lambda: len(bot.discord.answers_for(token)) >= 3, "the follow-ups")
    answers = await bot.command_answered(token, lambda got: got and got[-1].endswith("summary."))
    assert all(len(a) <= MESSAGE_LIMIT for a in answers) and " ".join(answers) == answer
    follow_ups = bot.discord.calls_to("POST", rf"/webhooks/{p.APP_ID}/[^/]+")
    assert len(follow_ups) == len(answers) - 1
    assert all(c.json["allowed_mentions"] == {"parse": []} for c in follow_ups)


async def test_reload_from_a_member_is_refused_politely_and_audited(bot: Bot) -> None:
    token = await bot.interact(p.slash("reload", name="gpt2-small-sft.safetensors"))  # alice owns the guild
    assert await bot.command_answered(token, finished()) == [NOT_ADMIN]
    [entry] = await bot.store.audit_entries(platform="discord")
    assert (entry.action, entry.actor_id) == ("checkpoint.reload", p.USER_ID)
    assert entry.target == "gpt2-small-sft.safetensors"
    assert entry.detail["ok"] is False and entry.detail["error"] == "refused: not an admin"
    assert bot.generator.info.name == "fake.safetensors"


@pytest.mark.parametrize("admin", [p.OWNER, p.ADMIN], ids=["application owner", "configured admin"])
async def test_an_admin_reloads_a_checkpoint(bot: Bot, admin: dict) -> None:
    token = await bot.interact(p.slash("reload", name="gpt2-medium-sft.pth"), by=admin)
    answers = await bot.command_answered(token, lambda got: len(got) == 2 and got[1].startswith("Now serving"))
    assert answers[0].startswith("Loading gpt2-medium-sft.pth")
    assert bot.generator.info.name == "gpt2-medium-sft.pth"
    [entry] = await bot.store.audit_entries(platform="discord")
    assert (entry.action, entry.actor_id, entry.detail["ok"]) == ("checkpoint.reload", admin["id"], True)


@pytest.mark.parametrize("application", [p.application(team_member=p.ALICE)], indirect=True)
async def test_a_team_owned_bot_trusts_team_admins_but_not_read_only_members(bot: Bot) -> None:
    refused = await bot.interact(p.slash("reload"), by=p.ALICE)
    assert await bot.command_answered(refused, finished()) == [NOT_ADMIN]
    allowed = await bot.interact(p.slash("reload"), by=p.OWNER)
    await bot.command_answered(allowed, lambda got: len(got) == 2 and got[1].startswith("Now serving"))


async def test_reload_autocomplete_offers_checkpoint_names_to_admins_only(bot: Bot) -> None:
    every = await bot.interact(p.slash("reload", name=("SFT", True)), kind=4, by=p.ADMIN)
    small = await bot.interact(p.slash("reload", name=("small", True)), kind=4, by=p.ADMIN)
    member = await bot.interact(p.slash("reload", name=("", True)), kind=4, by=p.ALICE)
    choices = bot.discord.autocomplete
    await wait_until(lambda: {every, small, member} <= choices.keys(), "the choices")
    assert {c["value"] for c in choices[every]} == {"gpt2-small-sft.safetensors", "gpt2-medium-sft.pth"}
    assert [c["value"] for c in choices[small]] == ["gpt2-small-sft.safetensors"]
    assert choices[member] == []


@pytest.mark.parametrize(("locale", "language"), [("de", "German"), ("pt-BR", "Portuguese"), ("en-US", "English")])
async def test_translate_message_translates_into_the_users_own_language(bot: Bot, locale: str, language: str) -> None:
    target = p.message(p.CHANNEL_ID, p.OWNER, "Où est la bibliothèque ?")
    token = await bot.interact(p.context_menu("Translate message", target), locale=locale)
    assert await bot.command_answered(token, finished()) == ["The answer is 4."]
    assert deferred(bot)[-1]["type"] == 5
    prompt = last_prompt(bot)
    assert f"Translate the following text into {language}." in prompt and "Où est la bibliothèque ?" in prompt


async def test_summarize_thread_reads_the_thread_the_message_is_in(bot: Bot) -> None:
    await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.OWNER, "outside the thread"))
    for text in ("a thread starts", "and goes on"):
        await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.THREAD_ID, p.ALICE, text))
    target = bot.discord.history[p.THREAD_ID][-1]
    token = await bot.interact(p.context_menu("Summarize thread", target), channel=p.thread())
    assert await bot.command_answered(token, finished()) == ["The answer is 4."]
    prompt = last_prompt(bot)
    assert "Alice: a thread starts\nAlice: and goes on" in prompt and "outside the thread" not in prompt
    assert bot.discord.calls_to("GET", rf"/channels/{p.THREAD_ID}/messages")


async def test_a_command_in_a_dm_is_filed_under_the_user(bot: Bot) -> None:
    token = await bot.interact(p.slash("summarize"), channel=p.dm_channel(p.ALICE))
    assert await bot.command_answered(token, finished()) == ["There is nothing here to summarize yet."]
    dm = p.message(p.DM_CHANNEL_ID, p.ALICE, "remember this", guild_id=None)
    await bot.discord.dispatch("MESSAGE_CREATE", dm)
    await bot.answered(dm, "The answer is 4.")
    key = ConversationKey("discord", dm_tenant(p.USER_ID), p.DM_CHANNEL_ID)
    await bot.history_becomes(key, ["remember this", "The answer is 4."])
    token = await bot.interact(p.slash("forget"), channel=p.dm_channel(p.ALICE))
    assert await bot.command_answered(token, finished()) == [forgotten(2)]
    assert await bot.store.recent_history(key) == []
    edits = bot.discord.calls_to("PATCH", rf"/webhooks/{p.APP_ID}/[^/]+/messages/@original")
    assert edits and all(c.json["allowed_mentions"] == {"parse": []} for c in edits)


async def test_a_mention_can_carry_a_command(bot: Bot) -> None:
    for text in ("older news", "the news", "more news"):
        await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.ALICE, text))
    question = await bot.mention("/summarize 2")
    await bot.answered(question, "The answer is 4.")
    prompt = last_prompt(bot)
    assert "Alice: the news\nAlice: more news" in prompt and "older" not in prompt and "/summarize" not in prompt


async def test_close_waits_for_a_command_still_reading_the_channel(bot: Bot) -> None:
    # A 429 on the history read keeps /summarize busy before it reaches the core; close must count it as begun.
    bot.discord.rate_limit_once("GET", rf"/channels/{p.CHANNEL_ID}/messages", retry_after=1.0)
    await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.ALICE, "something to summarize"))
    token = await bot.interact(p.slash("summarize"))
    await wait_until(lambda: any(c.status == 429 for c in bot.discord.calls), "the history read to be rate limited")
    await bot.adapter.close()
    assert [m.content for m in bot.discord.answers_for(token)] == ["The answer is 4."]


async def test_summarize_without_a_count_reads_the_services_default_however_large(bot: Bot) -> None:
    for i in range(SUMMARIZE_DEFAULT + 20):
        await bot.discord.dispatch("MESSAGE_CREATE", p.message(p.CHANNEL_ID, p.ALICE, f"message number {i}"))
    token = await bot.interact(p.slash("summarize"))
    await bot.command_answered(token, finished())
    reads = bot.discord.calls_to("GET", rf"/channels/{p.CHANNEL_ID}/messages")
    assert sum(int(call.query["limit"]) for call in reads) == SUMMARIZE_DEFAULT  # not a platform default of its own
