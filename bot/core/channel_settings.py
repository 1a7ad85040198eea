"""Per-channel settings an admin may change with `settings KEY VALUE`: parsed, validated, merged with defaults,
and read through a short cache (they are read on every message and change rarely)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from storage.store import Store

log = logging.getLogger(__name__)

# Other bot processes' changes show within this many seconds.
SETTINGS_TTL_S = 10.0
_CACHE_LIMIT = 10_000  # channels remembered at once, in a bot that sits in very many channels

RESET_WORDS = ("default", "reset")
OFF_WORDS = ("off", "none")


class SettingError(ValueError):
    """A setting name or value a user typed is not valid; the message says what is."""


@dataclass(frozen=True)
class ChannelConfig:
    """What one request in a channel runs with: the service defaults overlaid with the channel's settings."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    history_messages: int
    enabled: bool = True

    def with_stored(self, stored: Mapping[str, Any]) -> ChannelConfig:
        known = {k: v for k, v in stored.items() if k in SETTINGS}
        return ChannelConfig(**{**self.__dict__, **known})

    def fitted(self, max_new_tokens_limit: int) -> ChannelConfig:
        """This config with the answer length brought within what the serving model's context allows (and at least
        1): a value stored for a larger model, a default above it, or a damaged row must not make every message of a
        channel fail."""
        fitted = max(1, min(self.max_new_tokens, max_new_tokens_limit))
        return self if fitted == self.max_new_tokens else replace(self, max_new_tokens=fitted)

    def sampling(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }


Parser = Callable[[str, float | None], Any]  # (what was typed, a lower ceiling than the setting's own, or None)


def _number(kind: Callable[[str], Any], low: float, high: float, *, optional: bool = False) -> Parser:
    def parse(raw: str, ceiling: float | None) -> Any:
        if optional and raw.lower() in OFF_WORDS:
            return None
        try:
            value = kind(raw)
        except ValueError:
            raise SettingError(f"{raw!r} is not a {'whole ' if kind is int else ''}number") from None
        top = high if ceiling is None else min(high, ceiling)
        if not low <= value <= top:
            raise SettingError(f"{raw} is out of range: choose {low:g} to {top:g}" + (" or off" if optional else ""))
        return value

    return parse


def _switch(raw: str, _: float | None) -> bool:
    word = raw.lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise SettingError(f"{raw!r} is not on or off")


SETTINGS: dict[str, tuple[Parser, str]] = {
    "temperature": (_number(float, 0.0, 2.0), "0 is greedy (exact, repeatable); higher is more varied"),
    "top_k": (_number(int, 1, 50257, optional=True), "sample only from the k likeliest tokens, or off"),
    "top_p": (_number(float, 0.01, 1.0, optional=True), "nucleus sampling threshold, or off"),
    "max_new_tokens": (_number(int, 1, 1024), "longest answer, in tokens"),
    "history_messages": (_number(int, 0, 200), "earlier messages read back into the prompt"),
    "enabled": (_switch, "on or off: whether the bot answers chat in this channel"),
}


def parse_setting(key: str, raw: str, ceilings: Mapping[str, float] | None = None) -> tuple[str, Any]:
    """(key, value) for ``settings KEY VALUE``; value None means back to the default. ``ceilings`` lower a numeric
    setting's upper bound (max_new_tokens: what the serving model's context holds)."""
    key = key.lower().replace("-", "_")
    if key not in SETTINGS:
        raise SettingError(f"unknown setting {key!r}; settings are: {', '.join(SETTINGS)}")
    if raw.lower() in RESET_WORDS:
        return key, None
    parse, _ = SETTINGS[key]
    try:
        return key, parse(raw, (ceilings or {}).get(key))
    except SettingError as e:
        raise SettingError(f"{key}: {e}") from None


def shown(value: object) -> str:
    """A setting's value as `settings` shows it."""
    return "off" if value is None or value is False else "on" if value is True else str(value)


def describe(config: ChannelConfig, stored: Mapping[str, Any]) -> str:
    lines = []
    for key, (_, help_text) in SETTINGS.items():
        origin = "" if key in stored else " (default)"
        lines.append(f"{key} = {shown(getattr(config, key))}{origin}: {help_text}")
    return "\n".join(lines)


ChannelKey = tuple[str, str, str]  # platform, tenant, channel


class ChannelSettings:
    """The stored settings of each channel, read through a cache that lives `SETTINGS_TTL_S` seconds."""

    def __init__(self, store: Store, *, ttl_s: float = SETTINGS_TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._cache: dict[ChannelKey, tuple[float, dict[str, Any]]] = {}
        self._changes = 0  # counts writes: a read that began before one must not cache what it read

    async def get(self, key: ChannelKey) -> dict[str, Any]:
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        platform, tenant, channel = key
        changes = self._changes
        stored = await self._store.get_channel_settings(platform=platform, tenant=tenant, channel=channel)
        if changes == self._changes:
            self.remember(key, stored)
        return stored

    async def update(self, key: ChannelKey, changes: Mapping[str, Any], updated_by: str) -> dict[str, Any]:
        platform, tenant, channel = key
        merged = await self._store.update_channel_settings(
            platform=platform, tenant=tenant, channel=channel, changes=changes, updated_by=updated_by
        )
        self._changes += 1
        self.remember(key, merged)
        return merged

    def remember(self, key: ChannelKey, stored: dict[str, Any]) -> None:
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self._ttl_s, stored)

    def forget_all(self) -> None:
        """Drop every cached value (after a change made behind the cache's back, e.g. a clamp on reload)."""
        self._changes += 1
        self._cache.clear()
