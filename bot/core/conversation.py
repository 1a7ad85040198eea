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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.core.admin import AdminCommands, ReloadResult
from bot.core.answering import Answerer
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig, ChannelSettings
from bot.core.events import PlatformEvents
from bot.core.messages import Incoming, ReadRefused, Reply, ReplyRefused
from bot.core.ratelimit import RateLimiter, SenderLimits, wait_message
from bot.core.user_commands import HELP, UserCommands
from bot.inference.generator import (
    GenerationFailed,
    GenerationTimeout,
    Generator,
    GeneratorBusy,
    ModelInfo,
    TenantBusy,
)
from llm.prompts import Turn
from llm.tokenizer import Tokenizer
from storage.db import DatabaseUnavailableError
from storage.records import ConversationKey, Role, StoredMessage, UnstorableTextError
from storage.store import Store

log = logging.getLogger(__name__)

BUSY = "I'm busy with other people's questions right now; please try again in a moment."
# One guild or workspace has its share of the model in use: the others still get answers.
TENANT_BUSY = "Many questions from here are already waiting for me; please try again in a moment."
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
CHAT_OFF = "Chat is switched off here; an admin can switch it back on with: settings enabled on"
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
        self._config = config
        self._limits = SenderLimits(rate_limiter, admins)
        channel_settings = ChannelSettings(store)
        self._answerer = Answerer(generator, tokenizer, channel_settings, config.defaults, config.request_timeout_s)
        self._events = PlatformEvents(store)
        self._admin = AdminCommands(store, generator, admins, channel_settings, self._answerer, checkpoints_dir,
                                    config.defaults)  # fmt: skip
        user = UserCommands(store, generator, tokenizer, self._answerer, self._limits, config.summarize_default)
        self._commands: dict[str, Callable[[Incoming, Reply], Awaitable[None]]] = {
            "summarize": user.summarize,
            "translate": user.translate,
            "model": user.model,
            "forget": user.forget,
            "help": user.help,
            "reload": self._admin.reload,
            "settings": self._admin.settings,
        }

    @property
    def generator(self) -> Generator:
        return self._generator

    @property
    def model_info(self) -> ModelInfo:
        return self._generator.info

    async def handle(self, incoming: Incoming, reply: Reply) -> None:
        """Answer one message or command. Never raises: this is the per-message error boundary."""
        progress = _Progress()
        try:
            if incoming.event_id is not None and not await self.first_delivery(incoming.platform, incoming.event_id):
                log.info("%s event %s delivered again; answered already", incoming.platform, incoming.event_id)
                return
            if incoming.command == "chat":
                await self._chat(incoming, reply, progress)
            else:
                await self._commands[incoming.command](incoming, reply)
        except ReadRefused:
            return  # the adapter has told the user why it could not read the conversation
        except ReplyRefused:
            return  # the adapter has logged why the platform takes no more; no one is left to tell
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await _safe_send(reply, self._failure_message(e, incoming, progress))

    def _failure_message(self, error: Exception, incoming: Incoming, progress: _Progress) -> str:
        """What to tell the user about ``error``: short, true (never "saved" unless it was), and what to do."""
        if isinstance(error, TenantBusy):
            return TENANT_BUSY
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
        config = await self._answerer.config(incoming)
        if not config.enabled:  # an admin switched chat off here; commands still work
            if incoming.is_dm:  # in a channel silence is the point; in a conversation of two it would be a mystery
                await reply.send(CHAT_OFF)
            return
        if len(incoming.text) > MAX_MESSAGE_CHARS:
            await reply.send(
                f"Your message is {len(incoming.text):,} characters long; I take at most {MAX_MESSAGE_CHARS:,}. "
                "Please send a shorter one."
            )
            return
        # Before storing: a message that is not answered for now is not kept either (the user sends it again).
        if wait := self._limits.wait(incoming):
            if incoming.message_id is None or not await self._store.is_stored(key, incoming.message_id):
                await reply.send(wait_message(wait))
            return  # else: a redelivery of a message answered already, which the user sent once
        try:
            added = await self._store.add_message(
                key,
                role=Role.USER,
                author_id=incoming.author_id,
                text=incoming.text,
                platform_message_id=incoming.message_id,
            )
        except Exception:
            self._limits.refund(incoming)  # not stored: the user is told to send it again, which must count once
            raise
        if added.duplicate:
            self._limits.refund(incoming)  # the platform delivered it again; the user sent it once
            log.info("message %s delivered again; answered already", incoming.message_id)
            return
        progress.saved = True
        history = await self._store.recent_history(key, limit=config.history_messages + 1)
        turns = _pair_turns([m for m in history if m.id != added.message.id])
        prompt = await self._answerer.render(incoming.text, config, turns)
        answer, generation = await self._answerer.stream(incoming, prompt, config, reply)
        progress.answered = True
        if answer:  # an empty answer is no turn of the conversation (the adapter showed the user so)
            await self._store.add_message(key, role=Role.ASSISTANT, author_id="bot", text=answer, generation=generation)

    # -- what platforms report about their own state ------------------------------------------------------------

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        return await self._events.first_delivery(platform, event_id)

    async def messages_deleted(self, platform: str, tenant: str, channel: str, message_ids: Sequence[str]) -> int:
        return await self._events.messages_deleted(platform, tenant, channel, message_ids)

    async def channel_deleted(
        self, platform: str, tenant: str, channel: str, thread: str | None = None, *, reason: str
    ) -> int:
        return await self._events.channel_deleted(platform, tenant, channel, thread, reason)

    async def tenant_removed(self, platform: str, tenant: str, reason: str) -> int:
        return await self._events.tenant_removed(platform, tenant, reason)

    def checkpoint_names(self) -> list[str]:
        """Names `reload` accepts, newest first (for a platform's autocomplete)."""
        return self._admin.checkpoint_names()

    def is_admin(self, incoming: Incoming) -> bool:
        """Whether the sender may run admin commands (adapters use it to hide admin choices, never to grant)."""
        return self._admin.is_admin(incoming)

    async def reload_checkpoint(self, path: Path, platform: str, tenant: str, actor_id: str) -> ReloadResult:
        """Swap in ``path`` as `reload` does (the checkpoint watch's way in); raises ReloadFailed when refused."""
        return await self._admin.reload_checkpoint(path, platform, tenant, actor_id)


def _key(incoming: Incoming) -> ConversationKey:
    return ConversationKey(incoming.platform, incoming.tenant, incoming.channel, incoming.thread)


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


async def _safe_send(reply: Reply, text: str) -> None:
    try:
        await reply.send(text)
    except Exception:
        log.exception("could not even send the error message %r", text)
