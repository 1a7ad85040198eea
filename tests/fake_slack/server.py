"""A fake Slack on 127.0.0.1: the Web API methods the adapter uses, response_url posts, and a Socket Mode WebSocket.

It keeps the messages posted and edited (so tests read what a user would see), records every call with its time,
answers 429 with Retry-After when a test asks, and for Socket Mode sends envelopes and records when each was
acknowledged. Shapes follow Slack's documented payloads, trimmed to the fields Bolt and the adapter read.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

TEAM, BOT_USER, BOT_ID = "T1", "UBOT", "BBOT"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str  # the bearer token it came with
    at: float = field(default_factory=time.monotonic)


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    edits: int = 0


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: list[Posted] = []  # in posting order
        self.ephemeral: list[dict[str, Any]] = []  # response_url posts and chat.postEphemeral, in order
        self.history: dict[str, list[dict[str, Any]]] = {}  # channel -> its messages, oldest first
        self.rate_limit: dict[str, list[int]] = {}  # method -> Retry-After seconds for its next calls (429s)
        self.errors: dict[str, str] = {}  # method -> error every call gets (e.g. "not_in_channel")
        self.refused_tokens: dict[str, str] = {}  # token -> error every call with it gets (e.g. "token_revoked")
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: dict[str, float] = {}  # envelope id -> when it was acknowledged
        self.sent: dict[str, float] = {}  # envelope id -> when it was sent
        self.ack_payloads: dict[str, Any] = {}
        self.handshake_delay_s = 0.0  # a slow WebSocket handshake: a window to act while the client connects
        self.redirect_responses = False  # answer response_url posts with a redirect to themselves, endlessly
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base = ""

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{n}", self._response_url)
        app.router.add_post("/commands/{team}/{n}/{secret}", self._response_url)  # Slack's own response_url path
        app.router.add_get("/ws", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    def response_url(self) -> str:
        return f"{self.base}/response/{next(self._ids)}"

    # -- what tests read -----------------------------------------------------------------------------------------

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str | None) -> list[str]:
        """Texts the bot shows in a thread (or at the top level of a channel, thread_ts None), in order."""
        return [m.text for m in self.messages if m.channel == channel and m.thread_ts == thread_ts]

    # -- Web API ---------------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(parse_qsl(await request.text())))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.calls.append(Call(method, args, token))
        if self.rate_limit.get(method):
            wait = self.rate_limit[method].pop(0)
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(wait)}
            )
        if token in self.refused_tokens:  # Slack answers a dead token with HTTP 200 and ok: false, whatever the method
            return web.json_response({"ok": False, "error": self.refused_tokens[token]})
        if method in self.errors:
            return web.json_response({"ok": False, "error": self.errors[method]})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response({"ok": True, **handler(args, request)})

    def _auth_test(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {
            "url": "https://test.slack.com/",
            "team": "Test",
            "user": "scratchbot",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_postMessage(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        ts = f"1700000000.{next(self._ts):06d}"
        self.messages.append(Posted(args["channel"], ts, args["text"], args.get("thread_ts") or None))
        return {"channel": args["channel"], "ts": ts, "message": {"text": args["text"]}}

    def _chat_update(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        message = next(m for m in self.messages if m.channel == args["channel"] and m.ts == args["ts"])
        message.text, message.edits = args["text"], message.edits + 1
        return {"channel": args["channel"], "ts": args["ts"], "text": args["text"]}

    def _chat_postEphemeral(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        self.ephemeral.append({"text": args["text"], "user": args["user"], "channel": args["channel"]})
        return {"message_ts": f"1700000000.{next(self._ts):06d}"}

    def _conversations_history(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        newest_first = list(reversed(self.history.get(args["channel"], [])))
        return _page(newest_first, args)

    def _conversations_replies(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        in_thread = [m for m in self.history.get(args["channel"], []) if args["ts"] in (m.get("thread_ts"), m["ts"])]
        return _page(in_thread, args)

    def _apps_connections_open(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{request.url.port}/ws?ticket={next(self._ids)}"}

    async def _response_url(self, request: web.Request) -> web.Response:
        if self.redirect_responses:  # aiohttp gives up after 10 with TooManyRedirects, whose message holds the URL
            raise web.HTTPTemporaryRedirect(request.url)
        self.ephemeral.append(await request.json())
        return web.Response(text="ok")

    # -- Socket Mode -----------------------------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(self.handshake_delay_s)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "connection_info": {"app_id": "A1"},
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
            }
        )
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                ack = json.loads(message.data)
                self.acks.setdefault(ack["envelope_id"], time.monotonic())
                self.ack_payloads[ack["envelope_id"]] = ack.get("payload")
        return ws

    @property
    def connected(self) -> int:
        """How many Socket Mode connections are open now."""
        return sum(1 for ws in self.sockets if not ws.closed)

    async def send(self, kind: str, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        """Send an envelope (events_api, slash_commands, interactive) on the newest open connection."""
        envelope_id = f"env-{next(self._ids)}"
        ws = next(ws for ws in reversed(self.sockets) if not ws.closed)
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if kind == "events_api":
            envelope.update(retry_attempt=retry_attempt, retry_reason="timeout" if retry_attempt else "")
        self.sent[envelope_id] = time.monotonic()
        await ws.send_str(json.dumps(envelope).replace("/", "\\/"))  # Slack's JSON escapes every slash
        return envelope_id

    async def disconnect(self) -> None:
        """Ask the client to reconnect, as Slack does before it rotates a connection."""
        ws = next(ws for ws in reversed(self.sockets) if not ws.closed)
        await ws.send_json({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "fake"}})

    def ack_latency(self, envelope_id: str) -> float | None:
        if envelope_id not in self.acks:
            return None
        return self.acks[envelope_id] - self.sent[envelope_id]


async def eventually(condition: Any, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll until ``condition()`` is true; fail after ``timeout_s`` (generous: CI machines are slow and loaded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def eventually_async(read: Any, expected: Any, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll until ``await read()`` equals ``expected`` (a database read); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (got := await read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {got!r} != {expected!r}")
        await asyncio.sleep(0.05)


def _page(messages: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """One page of ``messages`` as Slack's cursor pagination returns it (limit, cursor, next_cursor, has_more)."""
    cursor = args.get("cursor") or ""
    start = int(base64.b64decode(cursor).decode().removeprefix("offset:")) if cursor else 0
    end = start + int(args.get("limit", 100))
    more = end < len(messages)
    next_cursor = base64.b64encode(f"offset:{end}".encode()).decode() if more else ""
    return {"messages": messages[start:end], "has_more": more, "response_metadata": {"next_cursor": next_cursor}}
