"""The soak benchmark's traffic: who talks where, and one action per kind of request or platform event.

`Population` is the synthetic platforms: tenants (guilds, workspaces) on Discord and Slack, channels and threads in
them, users, and the ids of recent messages (what a moderator deletes). A deleted channel, thread or tenant is replaced
by a fresh one with a new id, as the platform would give, so traffic keeps its shape and everything kept here stays
bounded: the soak must not measure a leak of its own. `Traffic` turns one kind name into one call of the real
`ConversationManager`, the way an adapter would make it.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.core.conversation import BUSY, TIMEOUT, ConversationManager
from bot.core.messages import Incoming, TranscriptLine
from bot.core.ratelimit import wait_message
from llm.assets import INSTRUCTION_DATA
from storage.records import dm_tenant

log = logging.getLogger(__name__)

# What a traffic worker does next, by relative weight. Reloads and retention are timed instead (see bench/soak.py).
WEIGHTS = {
    "chat": 60.0,
    "summarize": 8.0,
    "translate": 8.0,
    "model": 3.0,
    "settings": 2.0,
    "forget": 2.0,
    "delete_message": 6.0,
    "delete_bulk": 2.0,
    "delete_thread": 1.0,
    "delete_channel": 1.0,
    "remove_tenant": 0.4,
}
PLATFORMS = ("discord", "slack")
ADMIN = "soak-admin"  # configured as an admin on both platforms
LANGUAGES = ("German", "French", "Spanish", '"Brazilian Portuguese"', "Dutch")
RATE_LIMITED = wait_message(0).partition(";")[0]  # how the rate limit's answer starts
SENT_KEPT = 64  # recent message ids remembered per channel, for deletions
BULK_DELETE = 10  # messages in one bulk deletion, at most
TRANSCRIPT_MAX = 40  # lines a synthetic platform transcript returns, at most
DM_SHARE = 0.1  # chat messages sent as direct messages
THREAD_SHARE = 0.3  # channel messages sent in a thread


@dataclass(frozen=True)
class Place:
    platform: str
    tenant: str
    channel: str
    thread: str = ""
    is_dm: bool = False


class SoakReply:
    """A platform's reply held in memory: a streamed answer is read to its end, as an adapter editing its message
    would. Keeps only the last text (what `Traffic` inspects)."""

    def __init__(self) -> None:
        self.last = ""

    async def send(self, text: str) -> None:
        self.last = text

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        self.last = "".join([d async for d in deltas])
        return self.last


class Population:
    def __init__(self, rng: random.Random, *, tenants: int = 4, channels: int = 3, threads: int = 2, users: int = 150):
        self._rng = rng
        self._ids = itertools.count(1)
        self.users = [f"u{n}" for n in range(users)]
        # tenant -> platform, and tenant -> channel -> threads; replaced in place when deleted
        self.platform_of: dict[str, str] = {}
        self.channels: dict[str, dict[str, list[str]]] = {}
        self.sent: dict[tuple[str, str, str], deque[str]] = {}  # (platform, tenant, channel) -> recent message ids
        self._shape = (channels, threads)
        for n in range(tenants):
            self._add_tenant(PLATFORMS[n % len(PLATFORMS)])

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def place(self, *, in_thread: bool = False) -> Place:
        tenant = self._rng.choice(list(self.channels))
        channel = self._rng.choice(list(self.channels[tenant]))
        threads = self.channels[tenant][channel]
        thread = self._rng.choice(threads) if in_thread or self._rng.random() < THREAD_SHARE else ""
        return Place(self.platform_of[tenant], tenant, channel, thread)

    def dm(self, user: str) -> Place:
        platform = self._rng.choice(PLATFORMS)
        return Place(platform, dm_tenant(user), f"dm-{user}", is_dm=True)

    def remember(self, place: Place, message_id: str) -> None:
        key = (place.platform, place.tenant, place.channel)
        self.sent.setdefault(key, deque(maxlen=SENT_KEPT)).append(message_id)

    def take_sent(self, most: int) -> tuple[tuple[str, str, str], list[str]] | None:
        """Up to ``most`` recent message ids of one channel, forgotten here (they are being deleted)."""
        keys = [key for key, ids in self.sent.items() if ids]
        if not keys:
            return None
        key = self._rng.choice(keys)
        ids = self.sent[key]
        return key, [ids.pop() for _ in range(min(most, len(ids)))]

    def replace_thread(self, place: Place) -> None:
        threads = self.channels.get(place.tenant, {}).get(place.channel)
        if threads and place.thread in threads:
            threads[threads.index(place.thread)] = self.new_id("t")

    def replace_channel(self, tenant: str, channel: str) -> None:
        channels = self.channels.get(tenant)
        if channels is None or channel not in channels:
            return
        del channels[channel]
        channels[self.new_id("c")] = [self.new_id("t") for _ in range(self._shape[1])]
        self.sent.pop((self.platform_of[tenant], tenant, channel), None)

    def replace_tenant(self, tenant: str) -> None:
        platform = self.platform_of.pop(tenant)
        for channel in self.channels.pop(tenant):
            self.sent.pop((platform, tenant, channel), None)
        self._add_tenant(platform)

    def _add_tenant(self, platform: str) -> None:
        tenant = self.new_id("T" if platform == "slack" else "g")
        self.platform_of[tenant] = platform
        channels, threads = self._shape
        self.channels[tenant] = {self.new_id("c"): [self.new_id("t") for _ in range(threads)] for _ in range(channels)}


class Traffic:
    """One action per kind: ``await traffic.run(kind)``. Counts what was done and what was refused."""

    def __init__(self, manager: ConversationManager, population: Population, rng: random.Random) -> None:
        self._manager = manager
        self._people = population
        self._rng = rng
        records = json.loads(INSTRUCTION_DATA.read_text(encoding="utf-8"))
        self._questions = [f"{r['instruction']} {r['input']}".strip() for r in records]
        self._sentences = [r["output"] for r in records if 0 < len(r["output"]) < 200]
        self.refused: Counter[str] = Counter()  # replies that turned a request away: rate limit, busy, timeout
        self._actions: dict[str, Callable[[], Awaitable[None]]] = {
            "chat": self.chat,
            "summarize": self.summarize,
            "translate": self.translate,
            "model": self.model,
            "settings": self.settings,
            "forget": self.forget,
            "delete_message": lambda: self.delete_messages(1),
            "delete_bulk": lambda: self.delete_messages(BULK_DELETE),
            "delete_thread": self.delete_thread,
            "delete_channel": self.delete_channel,
            "remove_tenant": self.remove_tenant,
        }
        assert set(self._actions) == set(WEIGHTS), "every weighted kind needs an action"

    async def run(self, kind: str) -> None:
        await self._actions[kind]()

    async def handle(self, incoming: Incoming) -> str:
        reply = SoakReply()
        await self._manager.handle(incoming, reply)
        if reply.last.startswith(RATE_LIMITED):
            self.refused["rate limit"] += 1
        elif reply.last.startswith((BUSY, TIMEOUT)):
            self.refused["busy" if reply.last.startswith(BUSY) else "timeout"] += 1
        return reply.last

    def _incoming(self, place: Place, author: str, **fields: Any) -> Incoming:
        return Incoming(place.platform, place.tenant, place.channel, author, thread=place.thread, is_dm=place.is_dm,
                        **fields)  # fmt: skip

    async def chat(self) -> None:
        author = self._rng.choice(self._people.users)
        place = self._people.dm(author) if self._rng.random() < DM_SHARE else self._people.place()
        message_id = self._people.new_id("m")
        # Slack delivers an event id with each message; the core records it to drop redeliveries.
        event_id = f"E{message_id}" if place.platform == "slack" else None
        text = self._rng.choice(self._questions)
        await self.handle(self._incoming(place, author, text=text, message_id=message_id, event_id=event_id))
        self._people.remember(place, message_id)

    async def summarize(self) -> None:
        place = self._people.place()
        count = self._rng.choice(("", "5", "20", "60"))
        reader = self._transcript if self._rng.random() < 0.7 else None  # else: the platform shows no text
        author = self._rng.choice(self._people.users)
        await self.handle(self._incoming(place, author, command="summarize", text=count, transcript=reader))

    async def _transcript(self, count: int) -> tuple[TranscriptLine, ...]:
        users = self._people.users
        return tuple(
            TranscriptLine(self._rng.choice(users), self._rng.choice(self._sentences))
            for _ in range(min(count, TRANSCRIPT_MAX))
        )

    async def translate(self) -> None:
        text = f"{self._rng.choice(LANGUAGES)} {self._rng.choice(self._sentences)}"
        author = self._rng.choice(self._people.users)
        await self.handle(self._incoming(self._people.place(), author, command="translate", text=text))

    async def model(self) -> None:
        author = self._rng.choice(self._people.users)
        await self.handle(self._incoming(self._people.place(), author, command="model"))

    async def settings(self) -> None:
        """An admin changes a channel's answer length (or resets it); anyone may look at the settings."""
        place = self._people.place()
        if self._rng.random() < 0.5:
            change = f"max_new_tokens {self._rng.choice(('8', '16', 'default'))}"
            await self.handle(self._incoming(place, ADMIN, command="settings", text=change))
        else:
            await self.handle(self._incoming(place, self._rng.choice(self._people.users), command="settings"))

    async def reload(self, name: str) -> str:
        """An admin's `reload NAME`; returns the last answer ("Now serving ..." when it worked)."""
        return await self.handle(self._incoming(self._people.place(), ADMIN, command="reload", text=name))

    async def forget(self) -> None:
        author = self._rng.choice(self._people.users)
        await self.handle(self._incoming(self._people.place(), author, command="forget"))

    async def delete_messages(self, most: int) -> None:
        taken = self._people.take_sent(most)
        if taken is not None:
            (platform, tenant, channel), ids = taken
            await self._manager.messages_deleted(platform, tenant, channel, ids)

    async def delete_thread(self) -> None:
        place = self._people.place(in_thread=True)
        self._people.replace_thread(place)  # the platform sends nothing more to a deleted thread
        where = (place.platform, place.tenant, place.channel, place.thread)
        await self._manager.channel_deleted(*where, reason="soak: thread deleted")

    async def delete_channel(self) -> None:
        place = self._people.place()
        self._people.replace_channel(place.tenant, place.channel)
        await self._manager.channel_deleted(place.platform, place.tenant, place.channel, reason="soak: channel deleted")

    async def remove_tenant(self) -> None:
        place = self._people.place()
        self._people.replace_tenant(place.tenant)
        await self._manager.tenant_removed(place.platform, place.tenant, reason="soak: bot removed")
