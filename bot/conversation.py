"""ConversationManager: one `Incoming` in, one answer out, whatever the platform.

Chat: store the user's turn (once, however often the platform delivers it), read the conversation back, render an
Alpaca prompt inside the token budget, stream the model's answer to the reply handle, store the answer with the
checkpoint and settings that produced it. Commands: summarize, translate, model, forget, and for admins reload and
settings. Every failure stops here, at the boundary of one message: it is logged with its traceback and the user
gets a short, true sentence; what they sent is already stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.adapters.base import SUMMARIZE_MAX, Incoming, ReadRefused, Reply, summarize_count, translate_args
from bot.admin import AdminCommands, ReloadResult
from bot.auth import AdminPolicy
from bot.channel_settings import ChannelConfig, ChannelSettings
from bot.generation import GenerationFailed, GenerationTimeout, Generator, GeneratorBusy
from bot.ratelimit import RateLimiter
from llm.generate import SamplingParams
from llm.prompts import RESPONSE_STOPS, RenderedPrompt, Turn, clean_response, render_conversation, template_tokens
from llm.tokenizer import Tokenizer
from storage.db import DatabaseUnavailableError
from storage.records import ConversationKey, Generation, Role, StoredMessage, UnstorableTextError
from storage.store import Store

log = logging.getLogger(__name__)

BUSY = "I'm busy with other people's questions right now; please try again in a moment."
TIMEOUT = "That took too long, so I stopped. Try a shorter question, or ask for a shorter answer."
FAILED = "Sorry, something went wrong on my side; please try again."
FAILED_SAVED = "Sorry, something went wrong on my side. Your message is saved; please try again."
# What the user hears when the database cannot be used, by how far their message had got: never "saved" unless it is.
NOT_SAVED = "I could not save your message (the database is unavailable); please send it again in a minute."
SAVED_UNANSWERED = (
    "I saved your message but could not read this conversation back (the database is unavailable), so I cannot "
    "answer it now; please ask again in a minute."
)
ANSWER_NOT_SAVED = (
    "(I could not save this answer because the database is unavailable, so I will not remember it in this "
    "conversation.)"
)
UNAVAILABLE = "I could not do that: the database is unavailable. Please try again in a minute."
HELP = (
    "Mention me (or DM me) to chat. Commands: summarize [count], translate <language> <text> (quote a language of"
    ' several words: "Brazilian Portuguese"), model, forget (deletes your stored messages); admins: reload [name],'
    " settings [key value]."
)
SUMMARIZE_INSTRUCTION = "Summarize the following conversation in a few sentences."
# Below this many characters a prompt renders in well under a millisecond: a thread hop would cost more.
INLINE_RENDER_CHARS = 8_000
# The longest chat message taken (Slack's own limit; Discord's is 4,000). A longer one is a paste gone wrong: it would
# be cut to the context anyway, and storing it would cost every later history read.
MAX_MESSAGE_CHARS = 40_000


@dataclass(frozen=True)
class ManagerConfig:
    defaults: ChannelConfig  # the service's sampling and history defaults
    request_timeout_s: float = 120.0
    summarize_default: int = 50  # messages a summary reads when no count is given, on every platform
    failure_note: str = ""  # added to "something went wrong" (the terminal chat: where its log is)


@dataclass
class _Progress:
    """How far one request got, so that what the user is told on a failure is true."""

    saved: bool = False  # the user's message is stored
    answered: bool = False  # the answer was shown (only storing it is left)


class ConversationManager:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        tokenizer: Tokenizer,
        admins: AdminPolicy,
        rate_limiter: RateLimiter,
        checkpoints_dir: Path,
        config: ManagerConfig,
    ) -> None:
        self._store = store
        self._generator = generator
        self._tokenizer = tokenizer
        self._admins = admins
        self._limiter = rate_limiter
        self._config = config
        self._channel_settings = ChannelSettings(store)
        self._admin = AdminCommands(
            store, generator, tokenizer, admins, self._channel_settings, checkpoints_dir, config.defaults
        )
        self._handlers: dict[str, Callable[[Incoming, Reply, _Progress], Awaitable[None]]] = {
            "chat": self._chat,
            "summarize": self._summarize,
            "translate": self._translate,
            "model": self._model,
            "forget": self._forget,
            "reload": lambda incoming, reply, _: self._admin.reload(incoming, reply),
            "settings": lambda incoming, reply, _: self._admin.settings(incoming, reply),
            "help": self._help,
        }

    @property
    def generator(self) -> Generator:
        return self._generator

    async def handle(self, incoming: Incoming, reply: Reply) -> None:
        """Answer one message or command. Never raises: this is the per-message error boundary."""
        progress = _Progress()
        try:
            if incoming.event_id is not None and not await self.first_delivery(incoming.platform, incoming.event_id):
                log.info("%s event %s delivered again; answered already", incoming.platform, incoming.event_id)
                return
            await self._handlers[incoming.command](incoming, reply, progress)
        except ReadRefused:
            return  # the adapter has told the user why it could not read the conversation
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await _safe_send(reply, self._failure_message(e, incoming, progress))

    def _failure_message(self, error: Exception, incoming: Incoming, progress: _Progress) -> str:
        """What to tell the user about ``error``: short, true (never "saved" unless it was), and what to do."""
        if isinstance(error, GeneratorBusy):
            return BUSY
        if isinstance(error, GenerationTimeout):
            return TIMEOUT
        if isinstance(error, UnstorableTextError):
            return f"I can't keep your message: it {error.reason}. Remove it and send your message again."
        if isinstance(error, DatabaseUnavailableError):
            log.warning("database unavailable for %s %s in %s: %s", incoming.platform, incoming.command,
                        _where(incoming), error)  # fmt: skip
            if incoming.command != "chat":
                told = UNAVAILABLE
            else:
                told = ANSWER_NOT_SAVED if progress.answered else SAVED_UNANSWERED if progress.saved else NOT_SAVED
        else:
            if isinstance(error, GenerationFailed):
                log.error("generation failed in %s: %s", _where(incoming), error)
            else:
                log.exception("failed to answer %s %s in %s", incoming.platform, incoming.command, _where(incoming),
                              exc_info=error)  # fmt: skip
            told = FAILED_SAVED if progress.saved and not progress.answered else FAILED
        return f"{told} {self._config.failure_note}".strip()

    # -- chat ----------------------------------------------------------------------------------------------------

    async def _chat(self, incoming: Incoming, reply: Reply, progress: _Progress) -> None:
        if not incoming.text.strip():
            await reply.send(HELP)
            return
        key = _key(incoming)
        config = await self._channel_config(incoming)
        if not config.enabled:
            return  # an admin switched chat off here; commands still work
        if len(incoming.text) > MAX_MESSAGE_CHARS:
            await reply.send(
                f"Your message is {len(incoming.text):,} characters long; I take at most {MAX_MESSAGE_CHARS:,}. "
                "Please send a shorter one."
            )
            return
        # Before storing: a message that is not answered for now is not kept either (the user sends it again).
        counted = self._counts_against_limit(incoming)
        if counted and (wait := self._limiter.check(_sender(incoming))):
            if incoming.message_id is None or not await self._store.is_stored(key, incoming.message_id):
                await reply.send(_wait_message(wait))
            return  # else: a redelivery of a message answered already, which the user sent once
        try:
            added = await self._store.add_message(
                key, role=Role.USER, author_id=incoming.author_id, text=incoming.text,
                platform_message_id=incoming.message_id,
            )
        except Exception:
            if counted:  # not stored: the user is told to send it again, which must not count twice
                self._limiter.refund(_sender(incoming))
            raise
        if added.duplicate:
            if counted:  # the platform delivered it again; the user sent it once
                self._limiter.refund(_sender(incoming))
            log.info("message %s delivered again; answered already", incoming.message_id)
            return
        progress.saved = True
        history = await self._store.recent_history(key, limit=config.history_messages + 1)
        turns = _pair_turns([m for m in history if m.id != added.message.id])
        prompt = await self._render(incoming.text, config, turns)
        answer, generation = await self._generate(prompt, config, reply)
        progress.answered = True
        await self._store.add_message(
            key, role=Role.ASSISTANT, author_id="bot", text=answer, generation=generation
        )

    async def _generate(self, prompt: RenderedPrompt, config: ChannelConfig, reply: Reply) -> tuple[str, Generation]:
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            stop=RESPONSE_STOPS,
        )
        async with self._generator.stream(prompt.ids, params, timeout_s=self._config.request_timeout_s) as handle:
            await reply.stream(_strip_leading(handle))
        result = handle.result
        # A model can write a NUL byte; what is stored must be storable (the user saw it already).
        answer = clean_response(result.text).replace("\x00", "\ufffd")
        return answer, Generation(result.model_name, result.model_sha256, config.sampling())

    async def _render(
        self, instruction: str, config: ChannelConfig, turns: list[Turn], input_text: str = ""
    ) -> RenderedPrompt:
        budget = self._generator.context_length - config.max_new_tokens
        size = len(instruction) + len(input_text) + sum(len(t.instruction) + len(t.response) for t in turns)
        if size < INLINE_RENDER_CHARS:
            return render_conversation(self._tokenizer, instruction, budget, turns, input_text)
        # Long texts take milliseconds to tokenize: keep them off the event loop.
        return await asyncio.to_thread(render_conversation, self._tokenizer, instruction, budget, turns, input_text)

    # -- summarize / translate -----------------------------------------------------------------------------------

    async def _summarize(self, incoming: Incoming, reply: Reply, _: _Progress) -> None:
        count = self._config.summarize_default
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
            stored = await self._store.recent_history(_key(incoming), limit=count)
            lines = [f"{'bot' if m.role is Role.ASSISTANT else m.author_id}: {m.text}" for m in stored]
        if not lines:
            await reply.send("There is nothing here to summarize yet.")
            return
        config = await self._channel_config(incoming)
        transcript = await asyncio.to_thread(self._newest_lines, lines, config)
        prompt = await self._render(SUMMARIZE_INSTRUCTION, config, [], transcript)
        await self._generate(prompt, config, reply)

    def _newest_lines(self, lines: list[str], config: ChannelConfig) -> str:
        """The newest lines of a transcript that fit the prompt budget (oldest dropped first)."""
        room = self._generator.context_length - config.max_new_tokens
        room -= template_tokens(self._tokenizer, SUMMARIZE_INSTRUCTION)
        kept: list[str] = []
        for line in reversed(lines):
            room -= len(self._tokenizer.encode(line)) + 1
            if room < 0 and kept:
                break
            kept.append(line)
        return "\n".join(reversed(kept))

    async def _translate(self, incoming: Incoming, reply: Reply, _: _Progress) -> None:
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
        config = await self._channel_config(incoming)
        prompt = await self._render(f"Translate the following text into {language}.", config, [], text)
        await self._generate(prompt, config, reply)

    # -- information and privacy ---------------------------------------------------------------------------------

    async def _model(self, incoming: Incoming, reply: Reply, _: _Progress) -> None:
        info, stats = self._generator.info, self._generator.stats()
        await reply.send(
            f"Model: {info.name} (sha256 {info.sha256[:12]}…), {info.parameters:,} parameters, "
            f"{info.device}, {info.precision}, context {info.context_length} tokens; "
            f"loaded {info.loaded_at:%Y-%m-%d %H:%M:%S} UTC. Queue: {stats.queue_depth} waiting, "
            f"{stats.active} generating; recent speed {stats.recent_tokens_per_second:.1f} tokens/s."
        )

    async def _forget(self, incoming: Incoming, reply: Reply, _: _Progress) -> None:
        deleted = await self._store.forget_user(incoming.platform, incoming.author_id)
        await reply.send(f"Done: I deleted {deleted} stored message{'s' if deleted != 1 else ''} of yours.")

    async def _help(self, incoming: Incoming, reply: Reply, _: _Progress) -> None:
        await reply.send(HELP)

    # -- what platforms report about their own state ------------------------------------------------------------

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        """True the first time a platform event id is seen by any bot process sharing this database; False for a
        redelivery (Slack retries events it thinks were not acknowledged), which must not be answered again."""
        return await self._store.mark_event_processed(platform, event_id)

    async def message_deleted(self, platform: str, tenant: str, channel: str, message_id: str) -> int:
        """The user deleted a message on the platform: delete our stored copy too. Returns rows deleted."""
        deleted = await self._store.delete_message(
            platform=platform, tenant=tenant, channel=channel, platform_message_id=message_id
        )
        log.debug("message deleted on %s: %d stored copies removed", platform, deleted)
        return deleted

    async def tenant_removed(self, platform: str, tenant: str, reason: str) -> int:
        """The bot was removed from a guild or workspace: delete everything stored for it, and audit that."""
        deleted = await self._store.purge_tenant(platform, tenant)
        await self._store.record_audit(
            platform=platform, tenant=tenant, actor_id="platform", action="tenant.purge", target=tenant,
            detail={"reason": reason, "messages_deleted": deleted},
        )
        return deleted

    def checkpoint_names(self) -> list[str]:
        """Names `reload` accepts, newest first (for a platform's autocomplete)."""
        return self._admin.checkpoint_names()

    def is_admin(self, incoming: Incoming) -> bool:
        """Whether the sender may run admin commands (adapters use it to hide admin choices, never to grant)."""
        return self._admin.is_admin(incoming)

    async def reload_checkpoint(self, path: Path, platform: str, tenant: str, actor_id: str) -> ReloadResult:
        """Swap in ``path`` as `reload` does (the checkpoint watch's way in); raises ReloadFailed when refused."""
        return await self._admin.reload_checkpoint(path, platform, tenant, actor_id)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _counts_against_limit(self, incoming: Incoming) -> bool:
        # The person running the bot is not limited by the bot.
        return not self._admins.is_operator(incoming.platform, is_owner=incoming.author_is_owner)

    async def _allowed(self, incoming: Incoming, reply: Reply) -> bool:
        wait = self._limiter.check(_sender(incoming)) if self._counts_against_limit(incoming) else 0.0
        if wait:
            await reply.send(_wait_message(wait))
        return not wait

    async def _channel_config(self, incoming: Incoming) -> ChannelConfig:
        stored = await self._channel_settings.get((incoming.platform, incoming.tenant, incoming.channel))
        return self._config.defaults.with_stored(stored).fitted(self._admin.answer_limit())


def _key(incoming: Incoming) -> ConversationKey:
    return ConversationKey(incoming.platform, incoming.tenant, incoming.channel, incoming.thread)


def _wait_message(wait_s: float) -> str:
    return f"You're sending messages faster than I can answer; please wait {wait_s:.0f} s and send it again."


def _sender(incoming: Incoming) -> tuple[str, str]:
    return incoming.platform, incoming.author_id


def _where(incoming: Incoming) -> str:
    return f"{incoming.tenant}/{incoming.channel}/{incoming.thread or '-'}"


def _pair_turns(history: list[StoredMessage]) -> list[Turn]:
    """Earlier messages as (instruction, response) pairs. A message that was never answered (rate-limited, failed)
    is left out: an empty response in the prompt would teach the model to answer with nothing."""
    turns: list[Turn] = []
    pending: str | None = None
    for message in history:
        if message.role is Role.USER:
            pending = message.text
        elif pending is not None:
            turns.append(Turn(pending, message.text))
            pending = None
    return turns


async def _strip_leading(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """The model's deltas without the whitespace it opens with (the answer is shown stripped)."""
    started = False
    async for delta in deltas:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        if delta:
            yield delta


async def _safe_send(reply: Reply, text: str) -> None:
    try:
        await reply.send(text)
    except Exception:
        log.exception("could not even send the error message %r", text)
