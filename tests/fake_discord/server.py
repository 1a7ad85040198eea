"""A fake Discord on 127.0.0.1: the REST routes and the gateway the bot uses, speaking Discord's own JSON.

Every REST call is recorded with its JSON body. Messages the bot posts (in channels, or as interaction responses
and follow-ups) are kept with their edits, so a test reads what a user would see. The gateway follows Discord's
session protocol: HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeats, and RESUME after a dropped connection,
which replays the events the client missed and then says RESUMED. Deleting channels, threads and many messages at
once sends the gateway events Discord sends, in their shape. Frames go out as uncompressed text: discord.py
asks for zlib-stream but reads text frames as they are, as Discord's own uncompressed mode sends them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fake_discord import payloads as p

Json = dict[str, Any]
API = "/api/v10"
# Intents a bot may ask for only once its owner enabled them in the developer portal: members, presences, content.
PRIVILEGED_INTENTS = (1 << 1, 1 << 8, 1 << 15)


@dataclass
class Call:
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    status: int = 200
    at: float = field(default_factory=time.monotonic)


class Refusal(Exception):  # noqa: N818 -- Discord's answer, not an error of the fake's
    """A route handler's way to answer with one of Discord's JSON errors ({"message", "code"})."""

    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Posted:
    """A message the bot made visible, with every content it had."""

    id: str
    channel_id: str
    contents: list[str]
    payload: Json  # the JSON body that created it (allowed_mentions, message_reference, ...)
    interaction_token: str | None = None

    @property
    def content(self) -> str:
        return self.contents[-1]


class FakeDiscord:
    def __init__(self, token: str, *, application: Json | None = None, privileged_intents: int = 0) -> None:
        self.token = token
        self.application = application or p.application()
        self.privileged_intents = privileged_intents  # which the developer portal has enabled for this bot
        self.calls: list[Call] = []
        self.posted: dict[str, Posted] = {}  # id -> message, in posting order
        self.history: dict[str, list[Json]] = {}  # channel id -> messages users wrote (what GET history returns)
        self.identifies: list[Json] = []
        self.resumes: list[Json] = []
        self.commands: list[Json] = []  # the last bulk overwrite
        self.autocomplete: dict[str, list[Json]] = {}  # interaction token -> the choices the bot answered with
        self.deleted_channels: set[str] = set()  # channels and threads deleted: REST answers Unknown Channel
        self.expired: dict[str, Refusal] = {}  # interaction token -> how Discord refuses its webhook calls now
        self._rate_limits: list[tuple[str, re.Pattern[str], float, bool]] = []
        self._session_id = ""
        self._events: list[Json] = []  # this session's dispatches, for replay on RESUME
        self._socket: web.WebSocketResponse | None = None
        self._live = False  # the socket has a session: dispatches may go out
        self._ready = False  # ... and the client has its guild (or resumed): a test's events may follow
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.base_url.split('//')[1]}/gateway"

    @property
    def connected(self) -> bool:
        return self._socket is not None and not self._socket.closed and self._ready

    # -- what tests do -------------------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a gateway event (kept for replay if the client is disconnected right now)."""
        if event == "MESSAGE_CREATE":
            self.history.setdefault(data["channel_id"], []).append(data)
        frame = {"op": 0, "t": event, "s": len(self._events) + 1, "d": data}
        self._events.append(frame)
        if self._live and self._socket is not None and not self._socket.closed:
            await self._socket.send_str(json.dumps(frame))

    async def delete_channel(self, channel: Json) -> None:
        """Someone deleted a guild channel (with its threads): CHANNEL_DELETE carries the whole channel object."""
        self.deleted_channels.add(channel["id"])
        await self.dispatch("CHANNEL_DELETE", channel)

    async def delete_thread(self, thread_id: str, parent_id: str = p.CHANNEL_ID) -> None:
        """Someone deleted a thread: THREAD_DELETE carries its ids and type only."""
        self.deleted_channels.add(thread_id)
        await self.dispatch("THREAD_DELETE", p.thread_delete(thread_id, parent_id))

    async def delete_messages(self, channel_id: str, message_ids: list[str]) -> None:
        """A moderator deleted several messages of one channel or thread at once: one MESSAGE_DELETE_BULK."""
        history = self.history.get(channel_id, [])
        history[:] = [m for m in history if m["id"] not in message_ids]
        await self.dispatch("MESSAGE_DELETE_BULK", p.bulk_delete(channel_id, message_ids))

    def expire_interaction(self, token: str, status: int = 401, code: int = 50027) -> None:
        """An interaction's token stops working (15 minutes after the interaction): its response and follow-ups are
        refused, as Discord does, with 401 Invalid Webhook Token (50027) or 404 Unknown Webhook (10015)."""
        message = {50027: "Invalid Webhook Token", 10015: "Unknown Webhook"}[code]
        self.expired[token] = Refusal(status, message, code)

    async def reset_token(self, new_token: str) -> None:
        """The owner resets the bot token in the developer portal: the old one stops working at once, for REST and
        for the gateway, which closes the connection with 4004 (Authentication failed)."""
        self.token = new_token
        self._live = self._ready = False
        if self._socket is not None and not self._socket.closed:
            await self._socket.close(code=4004, message=b"Authentication failed.")

    async def drop_connection(self) -> None:
        """Close the gateway socket the way Discord does on a hiccup (4000: unknown error, resumable)."""
        assert self._socket is not None
        self._live = self._ready = False  # from now on events wait for the client to RESUME
        await self._socket.close(code=4000, message=b"fake hiccup")

    def rate_limit_once(self, method: str, path_pattern: str, retry_after: float, *, is_global: bool = False) -> None:
        """The next call matching answers 429 with this retry_after (then the route works again). ``is_global``:
        Discord's global limit (on every route of the bot), as Discord says it: "global" in the body and headers."""
        self._rate_limits.append((method, re.compile(path_pattern), retry_after, is_global))

    def calls_to(self, method: str, path_pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(path_pattern, c.path)]

    def replies_to(self, message_id: str) -> list[Posted]:
        # discord.py sends the referenced id as a JSON number; Discord accepts both
        return [
            m
            for m in self.posted.values()
            if str(m.payload.get("message_reference", {}).get("message_id")) == message_id
        ]

    def answers_for(self, interaction_token: str) -> list[Posted]:
        return [m for m in self.posted.values() if m.interaction_token == interaction_token]

    # -- gateway -------------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket, self._live, self._ready = socket, False, False
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            op, data = message["op"], message.get("d")
            if op == 1:  # heartbeat
                await socket.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
            elif op == 2:
                await self._identify(socket, data)
            elif op == 6:
                await self._resume(socket, data)
        return socket

    async def _identify(self, socket: web.WebSocketResponse, data: Json) -> None:
        if data["token"] != self.token:
            await socket.close(code=4004, message=b"Authentication failed.")
            return
        if any(data["intents"] & bit and not self.privileged_intents & bit for bit in PRIVILEGED_INTENTS):
            await socket.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identifies.append(data)
        self._session_id, self._events, self._live = uuid.uuid4().hex, [], True
        await self.dispatch("READY", p.ready(self._session_id, f"ws://{self.base_url.split('//')[1]}/gateway"))
        await self.dispatch("GUILD_CREATE", p.guild())
        self._ready = True

    async def _resume(self, socket: web.WebSocketResponse, data: Json) -> None:
        if data["token"] != self.token or data["session_id"] != self._session_id:
            await socket.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return
        self.resumes.append(data)
        missed = data["seq"]
        while missed < len(self._events):  # what the client missed, in order, with the same sequence numbers
            await socket.send_str(json.dumps(self._events[missed]))
            missed += 1
        frame = {"op": 0, "t": "RESUMED", "s": len(self._events) + 1, "d": {}}
        self._events.append(frame)
        self._live = self._ready = True  # no await since the last replay: nothing dispatched meanwhile is lost
        await socket.send_str(json.dumps(frame))

    # -- REST ----------------------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        call = Call(request.method, path, dict(request.query), body)
        self.calls.append(call)
        is_webhook = path.startswith(("/webhooks/", "/interactions/"))
        if not is_webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            call.status = 401
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        if is_webhook and (expired := self.expired.get(path.split("/")[3])):  # /webhooks/<app id>/<token>/...
            call.status = expired.status
            return _json({"message": expired.message, "code": expired.code}, status=expired.status)
        for limit in self._rate_limits:
            method, pattern, retry_after, is_global = limit
            if method == request.method and pattern.fullmatch(path):
                self._rate_limits.remove(limit)
                call.status = 429
                headers = {"Via": "1.1 google", "Retry-After": str(retry_after)}
                if is_global:
                    headers |= {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
                return _json(
                    {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global},
                    status=429,
                    headers=headers,
                )
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if method == request.method and match:
                try:
                    result = handler(body, request.query, *match.groups())
                except Refusal as refused:
                    call.status = refused.status
                    return _json({"message": refused.message, "code": refused.code}, status=refused.status)
                if result is None:
                    return web.Response(status=204)
                return _json(result)
        call.status = 404
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            (
                "GET",
                r"/gateway/bot",
                lambda *_: {
                    "url": f"ws://{self.base_url.split('//')[1]}/gateway",
                    "shards": 1,
                    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
                },
            ),
            ("GET", r"/users/@me", lambda *_: p.BOT),
            ("GET", r"/oauth2/applications/@me", lambda *_: self.application),
            ("PUT", r"/applications/(\d+)/commands", self._overwrite_commands),
            ("POST", r"/channels/(\d+)/typing", lambda *_: None),
            ("GET", r"/channels/(\d+)", self._get_channel),
            ("GET", r"/channels/(\d+)/messages", self._get_history),
            ("POST", r"/channels/(\d+)/messages", self._post_message),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit_message),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._interaction_callback),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/@original", self._edit_original),
            ("POST", r"/webhooks/(\d+)/([^/]+)", self._follow_up),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/(\d+)", self._edit_follow_up),
        ]

    def _overwrite_commands(self, body: list[Json], _query: Any, app_id: str) -> list[Json]:
        self.commands = [
            {
                "id": p.snowflake(),
                "application_id": app_id,
                "version": p.snowflake(),
                "type": 1,
                "description": "",
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                **command,
            }
            for command in body
        ]
        return self.commands

    def _get_channel(self, _body: Any, _query: Any, channel_id: str) -> Json:
        if channel_id in self.deleted_channels:
            raise Refusal(404, "Unknown Channel", 10003)
        if channel_id == p.DM_CHANNEL_ID:
            return p.dm_channel(p.ALICE)
        if channel_id in (p.THREAD_ID, p.UNCACHED_THREAD_ID):
            return p.thread(channel_id)
        return p.text_channel(channel_id)

    def _get_history(self, _body: Any, query: Any, channel_id: str) -> list[Json]:
        """Newest first, like Discord; ``before`` and ``limit`` honoured."""
        messages = self.history.get(channel_id, []) + [
            p.message(m.channel_id, p.BOT, m.content, message_id=m.id, guild_id=_guild_of(channel_id))
            for m in self.posted.values()
            if m.channel_id == channel_id and m.interaction_token is None
        ]
        before = int(query.get("before", 1 << 64))
        kept = sorted((m for m in messages if int(m["id"]) < before), key=lambda m: int(m["id"]), reverse=True)
        return kept[: int(query.get("limit", 50))]

    def _post_message(self, body: Json, _query: Any, channel_id: str) -> Json:
        return self._post(channel_id, body)

    def _post(self, channel_id: str, body: Json, token: str | None = None) -> Json:
        data = p.message(
            channel_id,
            p.BOT,
            body.get("content", ""),
            reference=body.get("message_reference"),
            webhook_id=p.APP_ID if token else None,
            guild_id=_guild_of(channel_id),
        )
        self.posted[data["id"]] = Posted(data["id"], channel_id, [data["content"]], body, token)
        return data

    def _edit(self, message_id: str, body: Json) -> Json:
        posted = self.posted[message_id]
        posted.contents.append(body.get("content", posted.content))
        return p.message(
            posted.channel_id, p.BOT, posted.content, message_id=message_id, guild_id=_guild_of(posted.channel_id)
        )

    def _edit_message(self, body: Json, _query: Any, _channel_id: str, message_id: str) -> Json:
        return self._edit(message_id, body)

    def _interaction_callback(self, body: Json, _query: Any, interaction_id: str, token: str) -> Json:
        kind = body["type"]
        if kind == 8:  # autocomplete result
            self.autocomplete[token] = body["data"]["choices"]
        response: Json = {"interaction": {"id": interaction_id, "type": 2}, "resource": {"type": kind}}
        if kind in (4, 5):  # a message (type 5: "thinking…" until the original response is edited)
            channel = self._interaction_channel(token)
            content = body.get("data", {}).get("content", "") if kind == 4 else ""
            data = self._post(channel, {**body.get("data", {}), "content": content}, token)
            self.posted[data["id"]].payload["original"] = True
            response["interaction"].update(response_message_id=data["id"], response_message_loading=kind == 5)
            response["resource"]["message"] = data
        return response

    def _original(self, token: str) -> Posted:
        return next(m for m in self.answers_for(token) if m.payload.get("original"))

    def _edit_original(self, body: Json, _query: Any, _app_id: str, token: str) -> Json:
        return self._edit(self._original(token).id, body)

    def _follow_up(self, body: Json, _query: Any, _app_id: str, token: str) -> Json:
        return self._post(self._interaction_channel(token), body, token)

    def _edit_follow_up(self, body: Json, _query: Any, _app_id: str, _token: str, message_id: str) -> Json:
        return self._edit(message_id, body)

    def _interaction_channel(self, token: str) -> str:
        for frame in reversed(self._events):
            if frame["t"] == "INTERACTION_CREATE" and frame["d"]["token"] == token:
                return frame["d"]["channel_id"]
        raise AssertionError(f"no interaction was created with token {token!r}")


def _guild_of(channel_id: str) -> str | None:
    return None if channel_id == p.DM_CHANNEL_ID else p.GUILD_ID


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Discord's bare content type (discord.py compares it exactly; aiohttp would add a charset)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )
