"""The commands anyone may use: summarize, translate, model, forget, help."""

from __future__ import annotations

import asyncio
import logging

from bot.core.answering import Answerer
from bot.core.channel_settings import ChannelConfig
from bot.core.commands import SUMMARIZE_MAX, summarize_count, translate_args
from bot.core.messages import Incoming, Reply
from bot.core.ratelimit import SenderLimits, wait_message
from bot.inference.generator import Generator
from llm.prompts import Encoder, template_tokens
from storage.records import ConversationKey, Role
from storage.store import Store

log = logging.getLogger(__name__)

HELP = (
    "Mention me (or DM me) to chat. Commands: summarize [count], translate <language> <text> (quote a language of"
    ' several words: "Brazilian Portuguese"), model, forget (deletes your stored messages); admins: reload [name],'
    " settings [key value]."
)
SUMMARIZE_INSTRUCTION = "Summarize the following conversation in a few sentences."


def forgotten(count: int) -> str:
    """What `forget` answers: what went, and that the bot's side of a direct conversation went with it."""
    return (
        f"Done: I deleted {count} stored message{'s' if count != 1 else ''}: everything you wrote, and our direct "
        "conversations whole, my replies included."
    )


class UserCommands:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        encoder: Encoder,
        answerer: Answerer,
        limits: SenderLimits,
        summarize_default: int,
    ) -> None:
        self._store = store
        self._generator = generator
        self._encoder = encoder
        self._answerer = answerer
        self._limits = limits
        self._summarize_default = summarize_default

    async def summarize(self, incoming: Incoming, reply: Reply) -> None:
        count = self._summarize_default
        if incoming.text.strip():
            typed = summarize_count(incoming.text)
            if typed is None:
                await reply.send(
                    f"Usage: summarize [count], where count is a number of messages from 1 to {SUMMARIZE_MAX}."
                )
                return
            count = typed
        if not await self._allowed(incoming, reply):
            return
        read = await incoming.transcript(count) if incoming.transcript is not None else None
        if read is not None:
            lines = [f"{line.author}: {line.text}" for line in read][-count:]
        else:
            key = ConversationKey(incoming.platform, incoming.tenant, incoming.channel, incoming.thread)
            stored = await self._store.recent_history(key, limit=count)
            lines = [f"{'bot' if m.role is Role.ASSISTANT else m.author_id}: {m.text}" for m in stored]
        if not lines:
            await reply.send("There is nothing here to summarize yet.")
            return
        config = await self._answerer.config(incoming)
        transcript = await asyncio.to_thread(self._newest_lines, lines, config)
        prompt = await self._answerer.render(SUMMARIZE_INSTRUCTION, config, input_text=transcript)
        await self._answerer.stream(incoming, prompt, config, reply)

    def _newest_lines(self, lines: list[str], config: ChannelConfig) -> str:
        """The newest lines of a transcript that fit the prompt budget (oldest dropped first)."""
        room = self._generator.context_length - config.max_new_tokens
        room -= template_tokens(self._encoder, SUMMARIZE_INSTRUCTION)
        kept: list[str] = []
        for line in reversed(lines):
            room -= len(self._encoder.encode(line)) + 1
            if room < 0 and kept:
                break
            kept.append(line)
        return "\n".join(reversed(kept))

    async def translate(self, incoming: Incoming, reply: Reply) -> None:
        parsed = translate_args(incoming.text)
        if parsed is None:
            await reply.send(
                "Usage: translate <language> <text>, for example: translate German Good morning! "
                'Quote a language of several words: translate "Brazilian Portuguese" Good morning!'
            )
            return
        language, text = parsed
        if not await self._allowed(incoming, reply):
            return
        config = await self._answerer.config(incoming)
        prompt = await self._answerer.render(f"Translate the following text into {language}.", config, input_text=text)
        await self._answerer.stream(incoming, prompt, config, reply)

    async def model(self, incoming: Incoming, reply: Reply) -> None:
        info, stats = self._generator.info, self._generator.stats()
        speed = stats.recent_tokens_per_second
        await reply.send(
            f"Model: {info.name} (sha256 {info.sha256[:12]}…), {info.parameters:,} parameters, "
            f"{info.device}, {info.precision}, context {info.context_length} tokens; "
            f"loaded {info.loaded_at:%Y-%m-%d %H:%M:%S} UTC. Queue: {stats.queue_depth} waiting, "
            f"{stats.active} generating; "
            + (f"recent speed {speed:.1f} tokens/s." if speed > 0 else "no answers generated recently.")
        )

    async def forget(self, incoming: Incoming, reply: Reply) -> None:
        deleted = await self._store.forget_user(incoming.platform, incoming.author_id)
        await reply.send(forgotten(deleted))

    async def help(self, incoming: Incoming, reply: Reply) -> None:
        await reply.send(HELP)

    async def _allowed(self, incoming: Incoming, reply: Reply) -> bool:
        wait = self._limits.wait(incoming)
        if wait:
            await reply.send(wait_message(wait))
        return not wait
