"""A terminal chat on the same core the platforms use: try the bot on a fresh machine, no tokens needed.

The local user started the process, so they are an admin here (reload, settings). Lines starting with ``/`` are
commands (``/summarize``, ``/translate German Good morning``, ``/model``, ``/reload name``, ``/forget``); Ctrl-D
ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from typing import TextIO

from bot.adapters.base import Incoming, parse_command
from bot.conversation import ConversationManager

log = logging.getLogger(__name__)

PLATFORM = "console"
PROMPT = "you> "


class ConsoleReply:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def send(self, text: str) -> None:
        self._out.write(f"bot> {text}\n")
        self._out.flush()

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        shown = []
        self._out.write("bot> ")
        self._out.flush()
        try:
            async for delta in deltas:
                shown.append(delta)
                self._out.write(delta)
                self._out.flush()
        finally:
            self._out.write("\n")
            self._out.flush()
        return "".join(shown)


class ConsoleAdapter:
    def __init__(self, manager: ConversationManager, *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
        self._manager = manager
        self._in = stdin
        self._out = stdout
        self._user = _local_user()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Read lines until end of input (Ctrl-D) or `stop`; answer each before reading the next."""
        lines = _read_lines(self._in)
        info = self._manager.generator.info
        self._out.write(f"scratchbot: chatting with {info.name} ({info.parameters:,} parameters). ")
        self._out.write("/help lists commands; Ctrl-D quits.\n")
        reply = ConsoleReply(self._out)
        while not self._stopping.is_set():
            self._out.write(PROMPT)
            self._out.flush()
            line = await _next_or_stop(lines, self._stopping)
            if line is None:
                break
            if not line.strip():
                continue
            command, args = parse_command(line)
            incoming = Incoming(
                platform=PLATFORM,
                tenant="local",
                channel="terminal",
                author_id=self._user,
                author_name=self._user,
                text=args,
                command=command,
                message_id=uuid.uuid4().hex,
                is_dm=True,
            )
            await self._manager.handle(incoming, reply)
        self._out.write("\n")
        self._out.flush()

    def stop(self) -> None:
        self._stopping.set()


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "local"


def _read_lines(stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines of ``stream`` from a daemon thread (a blocking read must not hold the event loop or the exit)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        except (ValueError, OSError):  # the stream was closed under us at shutdown
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return queue


async def _next_or_stop(lines: asyncio.Queue[str | None], stopping: asyncio.Event) -> str | None:
    get = asyncio.ensure_future(lines.get())
    stop = asyncio.ensure_future(stopping.wait())
    done, pending = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return get.result() if get in done else None
