"""Admin commands: `reload [name]` swaps the model, `settings [key value]` changes a channel's settings. Both are
admin-only (see `bot.core.auth`), bounded in what they accept, and audited, refusals included.

A reload to a model with a shorter context lowers every stored `max_new_tokens` that no longer fits, and says so in
its answer and in the audit log: a setting chosen for a bigger model must not make a channel fail every message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.answering import Answerer
from bot.core.auth import AdminPolicy
from bot.core.channel_settings import ChannelConfig, ChannelSettings, SettingError, describe, parse_setting, shown
from bot.core.checkpoint_names import CheckpointNameError, list_checkpoints, resolve_checkpoint
from bot.core.messages import Incoming, Reply
from bot.inference.generator import Generator, ModelInfo, ReloadFailed
from storage.db import DatabaseUnavailableError
from storage.store import Store

log = logging.getLogger(__name__)

NOT_ADMIN = "Sorry, only the bot's admins can do that: it changes the bot for everyone."
# Longest argument an admin command takes (a checkpoint name, a setting and its value): anything longer is a paste
# gone wrong, and would be echoed into answers and the audit log.
MAX_ARGUMENT_CHARS = 200
LOWERED_LISTED = 20  # channels named one by one in a reload's audit entry; the rest are counted


@dataclass(frozen=True)
class ReloadResult:
    info: ModelInfo
    answer_limit: int  # the longest answer the new model's context allows
    lowered: list[tuple[str, str, str, int]]  # channels whose max_new_tokens went down: platform, tenant, channel, old
    default_above_limit: bool  # the service default max_new_tokens is above the limit (used lowered while it serves)


class AdminCommands:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        admins: AdminPolicy,
        channel_settings: ChannelSettings,
        answerer: Answerer,
        checkpoints_dir: Path,
        defaults: ChannelConfig,
    ) -> None:
        self._store = store
        self._generator = generator
        self._admins = admins
        self._channel_settings = channel_settings
        self._answerer = answerer
        self._checkpoints_dir = checkpoints_dir
        self._defaults = defaults
        self._reload_lock = asyncio.Lock()  # one reload at a time; a second one waits its turn

    def is_admin(self, incoming: Incoming) -> bool:
        return self._admins.is_admin(
            incoming.platform, incoming.tenant, incoming.author_id, is_owner=incoming.author_is_owner
        )

    def checkpoint_names(self) -> list[str]:
        return [path.name for path in list_checkpoints(self._checkpoints_dir)]

    # -- reload --------------------------------------------------------------------------------------------------

    async def reload(self, incoming: Incoming, reply: Reply) -> None:
        name = incoming.text.strip()
        if not await self._admin_only(incoming, reply, "checkpoint.reload", name):
            return
        if len(name) > MAX_ARGUMENT_CHARS:
            await self._audit(incoming, "checkpoint.reload", name, ok=False, error="name too long")
            await reply.send(f"Reload refused: a checkpoint name is at most {MAX_ARGUMENT_CHARS} characters.")
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
            result = await self.reload_checkpoint(path, incoming.platform, incoming.tenant, incoming.author_id)
        except ReloadFailed as e:
            await reply.send(f"Reload failed, still serving {self._generator.info.name}: {e}")
            return
        info = result.info
        text = f"Now serving {info.name} (sha256 {info.sha256[:12]}…, {info.parameters:,} parameters)."
        await reply.send(text + _lowered_note(result, self._defaults.max_new_tokens))

    async def reload_checkpoint(self, path: Path, platform: str, tenant: str, actor_id: str) -> ReloadResult:
        """Load, check and swap in ``path`` (one reload at a time), recording the attempt either way; then lower the
        channels' answer lengths that the new model's context cannot hold. Raises ReloadFailed, with the old model
        still serving, when the checkpoint is refused."""
        async with self._reload_lock:
            try:
                info = await self._generator.reload(path, path.name)
            except ReloadFailed as e:
                await self._record_reload(platform, tenant, actor_id, path.name, None, {"error": str(e)}, ok=False)
                raise
            limit = self._answerer.answer_limit()
            lowered = await self._lower_answer_lengths(limit, actor_id)
        result = ReloadResult(info, limit, lowered, self._defaults.max_new_tokens > limit)
        detail: dict[str, Any] = {"sha256": info.sha256, "context_length": info.context_length}
        if lowered or result.default_above_limit:
            detail["max_new_tokens_limit"] = limit
            detail["max_new_tokens_lowered"] = [f"{p}/{t}/{c} from {old}" for p, t, c, old in lowered[:LOWERED_LISTED]]
            detail["max_new_tokens_lowered_count"] = len(lowered)
        await self._record_reload(platform, tenant, actor_id, info.name, info.sha256, detail, ok=True)
        return result

    async def _lower_answer_lengths(self, limit: int, actor_id: str) -> list[tuple[str, str, str, int]]:
        try:
            lowered = await self._store.lower_channel_setting("max_new_tokens", limit, updated_by=actor_id)
        except DatabaseUnavailableError as e:
            # Not fatal: the stored values are lowered again at use (ChannelConfig.fitted), only not rewritten.
            log.warning("after the reload, could not lower stored max_new_tokens above %d: %s", limit, e)
            return []
        self._channel_settings.forget_all()
        if lowered:
            log.info("max_new_tokens lowered to %d in %d channels for the new model's context", limit, len(lowered))
        return lowered

    async def _record_reload(
        self,
        platform: str,
        tenant: str,
        actor_id: str,
        name: str,
        sha256: str | None,
        detail: dict[str, Any],
        *,
        ok: bool,
    ) -> None:
        try:
            await self._store.record_checkpoint_load(
                name=name,
                sha256=sha256,
                requested_by=f"{platform}:{actor_id}",
                succeeded=ok,
                detail=str(detail.get("error") or ""),
            )
            await self._store.record_audit(
                platform=platform,
                tenant=tenant,
                actor_id=actor_id,
                action="checkpoint.reload",
                target=name,
                detail={"ok": ok, **detail},
            )
        except DatabaseUnavailableError as e:
            # The swap itself happened (or was refused) whatever the database says; the log keeps the record.
            log.error("could not record the reload of %s (ok=%s) by %s:%s: %s", name, ok, platform, actor_id, e)

    # -- settings ------------------------------------------------------------------------------------------------

    async def settings(self, incoming: Incoming, reply: Reply) -> None:
        key = (incoming.platform, incoming.tenant, incoming.channel)
        words = incoming.text.split()
        if not words:
            stored = await self._channel_settings.get(key)
            config = self._defaults.with_stored(stored).fitted(self._answerer.answer_limit())
            await reply.send("Settings for this channel:\n" + describe(config, stored))
            return
        if not await self._admin_only(incoming, reply, "channel.settings", incoming.text):
            return
        try:
            if len(incoming.text.strip()) > MAX_ARGUMENT_CHARS:
                raise SettingError(f"a setting and its value take at most {MAX_ARGUMENT_CHARS} characters")
            if len(words) != 2:
                raise SettingError("usage: settings <key> <value> (or 'default' to reset); settings alone shows them")
            limit = self._answerer.answer_limit()
            try:
                name, value = parse_setting(words[0], words[1], {"max_new_tokens": limit})
            except SettingError as e:
                if not str(e).startswith("max_new_tokens"):
                    raise
                info = self._generator.info
                raise SettingError(
                    f"{e} for the model now serving ({info.name}): its context of {info.context_length} tokens "
                    "must also hold the prompt"
                ) from None
        except SettingError as e:
            await self._audit(incoming, "channel.settings", incoming.text, ok=False, error=str(e))
            await reply.send(f"Not changed: {e}")
            return
        merged = await self._channel_settings.update(key, {name: value}, incoming.author_id)
        await self._audit(incoming, "channel.settings", f"{name}={value}", ok=True, channel=incoming.channel)
        now = getattr(self._defaults.with_stored(merged).fitted(self._answerer.answer_limit()), name)
        await reply.send(f"{name} is now {shown(now)} in this channel.")

    # -- helpers -------------------------------------------------------------------------------------------------

    async def _admin_only(self, incoming: Incoming, reply: Reply, action: str, target: str) -> bool:
        if self.is_admin(incoming):
            return True
        await self._audit(incoming, action, target, ok=False, error="refused: not an admin")
        await reply.send(NOT_ADMIN)
        return False

    async def _audit(self, incoming: Incoming, action: str, target: str, **detail: object) -> None:
        await self._store.record_audit(
            platform=incoming.platform,
            tenant=incoming.tenant,
            actor_id=incoming.author_id,
            action=action,
            target=target,
            detail=detail,
        )


def _lowered_note(result: ReloadResult, default: int) -> str:
    if not result.lowered and not result.default_above_limit:
        return ""
    count, limit = len(result.lowered), result.answer_limit
    parts = []
    if count:
        parts.append(f"max_new_tokens was lowered to {limit} in {count} channel{'s' if count != 1 else ''}")
    if result.default_above_limit:
        parts.append(f"the service default ({default}) is used as {limit} while it serves")
    context = result.info.context_length
    return f" Its context is {context} tokens, so answers are at most {limit} tokens: {'; '.join(parts)}."
