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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.adapters.base import SUMMARIZE_MAX, Incoming, Reply, summarize_count, translate_args
from bot.auth import AdminPolicy
from bot.channel_settings import ChannelConfig, SettingError, describe, parse_setting
from bot.checkpoint_names import CheckpointNameError, list_checkpoints, resolve_checkpoint
from bot.generation import GenerationFailed, GenerationTimeout, Generator, GeneratorBusy, ModelInfo, ReloadFailed
from bot.ratelimit import RateLimiter
from llm.generate import SamplingParams
from llm.prompts import RESPONSE_STOPS, RenderedPrompt, Turn, clean_response, render_conversation
from llm.tokenizer import Tokenizer
from storage.records import ConversationKey, Generation, Role, StoredMessage
from storage.store import Store

log = logging.getLogger(__name__)

BUSY = "I'm busy with other people's questions right now; please try again in a moment."
TIMEOUT = "That took too long, so I stopped. Try a shorter question, or ask for a shorter answer."
FAILED = "Sorry, something went wrong on my side. Your message is saved; please try again."
NOT_ADMIN = "Sorry, only the bot's admins can do that: it changes the bot for everyone."
HELP = (
    "Mention me (or DM me) to chat. Commands: summarize [count], translate <language> <text> (quote a language of"
    ' several words: "Brazilian Portuguese"), model, forget (deletes your stored messages); admins: reload [name],'
    " settings [key value]."
)
SUMMARIZE_INSTRUCTION = "Summarize the following conversation in a few sentences."
# Below this many characters a prompt renders in well under a millisecond: a thread hop would cost more.
INLINE_RENDER_CHARS = 8_000
# Channel settings are read on every message but change rarely; other bot processes' changes show within this.
SETTINGS_TTL_S = 10.0


@dataclass(frozen=True)
class ManagerConfig:
    defaults: ChannelConfig  # the service's sampling and history defaults
    request_timeout_s: float = 120.0
    summarize_default: int = 50


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
        self._checkpoints_dir = checkpoints_dir
        self._config = config
        self._reload_lock = asyncio.Lock()
        self._settings_cache: dict[tuple[str, str, str], tuple[float, dict[str, object]]] = {}
        self._handlers: dict[str, Callable[[Incoming, Reply], Awaitable[None]]] = {
            "chat": self._chat,
            "summarize": self._summarize,
            "translate": self._translate,
            "model": self._model,
            "forget": self._forget,
            "reload": self._reload,
            "settings": self._settings,
            "help": self._help,
        }

    @property
    def generator(self) -> Generator:
        return self._generator

    async def handle(self, incoming: Incoming, reply: Reply) -> None:
        """Answer one message or command. Never raises: this is the per-message error boundary."""
        try:
            await self._handlers[incoming.command](incoming, reply)
        except GeneratorBusy:
            await _safe_send(reply, BUSY)
        except GenerationTimeout:
            await _safe_send(reply, TIMEOUT)
        except GenerationFailed as e:
            log.error("generation failed in %s: %s", _where(incoming), e)
            await _safe_send(reply, FAILED)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("failed to answer %s %s in %s", incoming.platform, incoming.command, _where(incoming))
            await _safe_send(reply, FAILED)

    # -- chat ----------------------------------------------------------------------------------------------------

    async def _chat(self, incoming: Incoming, reply: Reply) -> None:
        if not incoming.text.strip():
            await reply.send(HELP)
            return
        key = _key(incoming)
        config = await self._channel_config(incoming)
        if not config.enabled:
            return  # an admin switched chat off here; commands still work
        added = await self._store.add_message(
            key, role=Role.USER, author_id=incoming.author_id, text=incoming.text,
            platform_message_id=incoming.message_id,
        )
        if added.duplicate:
            log.info("message %s delivered again; answered already", incoming.message_id)
            return
        if not await self._allowed(incoming, reply):
            return
        history = await self._store.recent_history(key, limit=config.history_messages + 1)
        turns = _pair_turns([m for m in history if m.id != added.message.id])
        prompt = await self._render(incoming.text, config, turns)
        answer, generation = await self._generate(prompt, config, reply)
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
        answer = clean_response(result.text)
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

    async def _summarize(self, incoming: Incoming, reply: Reply) -> None:
        count = self._config.summarize_default
        if incoming.text.strip():
            typed = summarize_count(incoming.text)
            if typed is None:
                await reply.send(
                    f"Usage: summarize [count], where count is a number of messages from 1 to {SUMMARIZE_MAX}."
                )
                return
            count = typed
        if incoming.transcript is not None:
            lines = [f"{line.author}: {line.text}" for line in incoming.transcript][-count:]
        else:
            stored = await self._store.recent_history(_key(incoming), limit=count)
            lines = [f"{'bot' if m.role is Role.ASSISTANT else m.author_id}: {m.text}" for m in stored]
        if not lines:
            await reply.send("There is nothing here to summarize yet.")
            return
        if not await self._allowed(incoming, reply):
            return
        config = await self._channel_config(incoming)
        transcript = await asyncio.to_thread(self._newest_lines, lines, config)
        prompt = await self._render(SUMMARIZE_INSTRUCTION, config, [], transcript)
        await self._generate(prompt, config, reply)

    def _newest_lines(self, lines: list[str], config: ChannelConfig) -> str:
        """The newest lines of a transcript that fit the prompt budget (oldest dropped first)."""
        room = self._generator.context_length - config.max_new_tokens - 80  # template and instruction
        kept: list[str] = []
        for line in reversed(lines):
            room -= len(self._tokenizer.encode(line)) + 1
            if room < 0 and kept:
                break
            kept.append(line)
        return "\n".join(reversed(kept))

    async def _translate(self, incoming: Incoming, reply: Reply) -> None:
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

    async def _model(self, incoming: Incoming, reply: Reply) -> None:
        info, stats = self._generator.info, self._generator.stats()
        await reply.send(
            f"Model: {info.name} (sha256 {info.sha256[:12]}…), {info.parameters:,} parameters, "
            f"{info.device}, {info.precision}, context {info.context_length} tokens; "
            f"loaded {info.loaded_at:%Y-%m-%d %H:%M:%S} UTC. Queue: {stats.queue_depth} waiting, "
            f"{stats.active} generating; recent speed {stats.recent_tokens_per_second:.1f} tokens/s."
        )

    async def _forget(self, incoming: Incoming, reply: Reply) -> None:
        deleted = await self._store.forget_user(incoming.platform, incoming.author_id)
        await reply.send(f"Done: I deleted {deleted} stored message{'s' if deleted != 1 else ''} of yours.")

    async def _help(self, incoming: Incoming, reply: Reply) -> None:
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
        return [path.name for path in list_checkpoints(self._checkpoints_dir)]

    def is_admin(self, incoming: Incoming) -> bool:
        """Whether the sender may run admin commands (adapters use it to hide admin choices, never to grant)."""
        return self._admins.is_admin(
            incoming.platform, incoming.tenant, incoming.author_id, is_owner=incoming.author_is_owner
        )

    # -- admin ---------------------------------------------------------------------------------------------------

    async def _reload(self, incoming: Incoming, reply: Reply) -> None:
        name = incoming.text.strip()
        if not await self._admin_only(incoming, reply, "checkpoint.reload", name):
            return
        try:
            path = await asyncio.to_thread(resolve_checkpoint, self._checkpoints_dir, name or None)
        except CheckpointNameError as e:
            await self._audit(incoming, "checkpoint.reload", name, ok=False, error=str(e))
            await reply.send(f"Reload refused: {e}")
            return
        if self._reload_lock.locked():
            await reply.send("A reload is already running; this one starts when it is done.")
        await reply.send(f"Loading {path.name} and checking it; the current model keeps answering meanwhile.")
        try:
            info = await self.reload_checkpoint(path, incoming.platform, incoming.tenant, incoming.author_id)
        except ReloadFailed as e:
            await reply.send(f"Reload failed, still serving {self._generator.info.name}: {e}")
            return
        await reply.send(f"Now serving {info.name} (sha256 {info.sha256[:12]}…, {info.parameters:,} parameters).")

    async def reload_checkpoint(self, path: Path, platform: str, tenant: str, actor_id: str) -> ModelInfo:
        """Load, check and swap in ``path`` (one reload at a time), recording the attempt either way.
        Raises ReloadFailed, with the old model still serving, when the checkpoint is refused."""
        async with self._reload_lock:
            try:
                info = await self._generator.reload(path, path.name)
            except ReloadFailed as e:
                await self._record_reload(platform, tenant, actor_id, path.name, None, ok=False, detail=str(e))
                raise
        await self._record_reload(platform, tenant, actor_id, info.name, info.sha256, ok=True, detail="")
        return info

    async def _record_reload(
        self, platform: str, tenant: str, actor_id: str, name: str, sha256: str | None, *, ok: bool, detail: str
    ) -> None:
        await self._store.record_checkpoint_load(
            name=name, sha256=sha256, requested_by=f"{platform}:{actor_id}", succeeded=ok, detail=detail
        )
        await self._store.record_audit(
            platform=platform, tenant=tenant, actor_id=actor_id, action="checkpoint.reload", target=name,
            detail={"ok": ok, "sha256": sha256, "error": detail or None},
        )

    async def _settings(self, incoming: Incoming, reply: Reply) -> None:
        words = incoming.text.split()
        stored = await self._stored_settings(incoming)
        if not words:
            config = self._config.defaults.with_stored(stored)
            await reply.send("Settings for this channel:\n" + describe(config, stored))
            return
        if not await self._admin_only(incoming, reply, "channel.settings", incoming.text):
            return
        if len(words) != 2:
            await reply.send("Usage: settings <key> <value> (or 'default' to reset); settings alone shows them.")
            return
        try:
            key, value = parse_setting(words[0], words[1])
        except SettingError as e:
            await reply.send(f"Not changed: {e}")
            return
        merged = await self._store.update_channel_settings(
            platform=incoming.platform, tenant=incoming.tenant, channel=incoming.channel, changes={key: value},
            updated_by=incoming.author_id,
        )
        self._remember_settings((incoming.platform, incoming.tenant, incoming.channel), merged)
        await self._audit(incoming, "channel.settings", f"{key}={value}", ok=True, channel=incoming.channel)
        config = self._config.defaults.with_stored(merged)
        shown = getattr(config, key)
        await reply.send(f"{key} is now {'off' if shown is None else shown} in this channel.")

    async def _admin_only(self, incoming: Incoming, reply: Reply, action: str, target: str) -> bool:
        if self.is_admin(incoming):
            return True
        await self._audit(incoming, action, target, ok=False, error="refused: not an admin")
        await reply.send(NOT_ADMIN)
        return False

    async def _audit(self, incoming: Incoming, action: str, target: str, **detail: object) -> None:
        await self._store.record_audit(
            platform=incoming.platform, tenant=incoming.tenant, actor_id=incoming.author_id,
            action=action, target=target, detail=detail,
        )

    # -- helpers -------------------------------------------------------------------------------------------------

    async def _allowed(self, incoming: Incoming, reply: Reply) -> bool:
        wait = self._limiter.check((incoming.platform, incoming.author_id))
        if wait:
            await reply.send(f"You're sending messages faster than I can answer; please wait {wait:.0f} s.")
        return not wait

    async def _stored_settings(self, incoming: Incoming) -> dict[str, object]:
        key = (incoming.platform, incoming.tenant, incoming.channel)
        cached = self._settings_cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        stored = await self._store.get_channel_settings(
            platform=incoming.platform, tenant=incoming.tenant, channel=incoming.channel
        )
        self._remember_settings(key, stored)
        return stored

    def _remember_settings(self, key: tuple[str, str, str], stored: dict[str, object]) -> None:
        if len(self._settings_cache) > 10_000:  # bounded in a bot that sits in very many channels
            self._settings_cache.clear()
        self._settings_cache[key] = (time.monotonic() + SETTINGS_TTL_S, stored)

    async def _channel_config(self, incoming: Incoming) -> ChannelConfig:
        return self._config.defaults.with_stored(await self._stored_settings(incoming))


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
