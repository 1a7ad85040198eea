"""A terminal chat on the same core the platforms use: try the bot on a fresh machine, no tokens needed.

The local user started the process: they are an admin here (reload, settings) and no rate limit applies to them.
Lines starting with ``/`` are commands (``/summarize``, ``/translate German Good morning``, ``/model``,
``/reload name``, ``/forget``); Ctrl-D ends the session. The conversation is filed as a direct one
(`storage.records.dm_tenant`), so ``/forget`` deletes it whole, the bot's replies included.

At a terminal, lines are read through GNU readline: the terminal's own line editing cuts a line at 4,095 bytes
without a word, readline reads a paste whole (a multi-line paste too, as one message) and adds editing and history.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TextIO

from bot.adapters.streaming import EMPTY_ANSWER
from bot.core.commands import COMMANDS, parse_command
from bot.core.messages import Core, Incoming
from storage.records import dm_tenant

log = logging.getLogger(__name__)

PLATFORM = "console"
PROMPT = "you> "
HELP = (
    "Type a message and press Enter to chat; a long or multi-line paste is read whole. Commands: /summarize [count] "
    "(this conversation), /translate <language> <text> (quote a language of several words: /translate "
    '"Brazilian Portuguese" Good morning), /model, /forget (deletes this conversation, my replies too), '
    "/reload [name], /settings [key value], /help. Ctrl-D quits."
)


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
            if not "".join(shown).strip():
                self._out.write(EMPTY_ANSWER)
        finally:
            self._out.write("\n")
            self._out.flush()
        return "".join(shown)


class ConsoleAdapter:
    def __init__(
        self,
        core: Core,
        *,
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        log_path: Path | None = None,
    ) -> None:
        self._core = core
        self._in = stdin
        self._out = stdout
        self._log_path = log_path
        self._user = _local_user()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Read lines until end of input (Ctrl-D) or `stop`; answer each before reading the next."""
        info = self._core.model_info
        self._out.write(f"scratchbot: chatting with {info.name} ({info.parameters:,} parameters). ")
        self._out.write("/help lists commands; Ctrl-D quits.")
        self._out.write(f" The log is {self._log_path}.\n" if self._log_path else "\n")
        self._out.flush()
        reply = ConsoleReply(self._out)
        with _lines(self._in, self._out) as lines:
            while not self._stopping.is_set():
                line = await _next_or_stop(lines, self._stopping)
                if line is None:
                    break
                if line.strip():
                    await self._answer(line, reply)
        self._out.write("\n")
        self._out.flush()

    async def _answer(self, line: str, reply: ConsoleReply) -> None:
        command, args = parse_command(line)
        if command == "help":
            await reply.send(HELP + (f" The log is {self._log_path}." if self._log_path else ""))
            return
        typed = (line.strip()[1:].split(maxsplit=1) or [""])[0] if line.strip().startswith("/") else None
        if command == "chat" and typed is not None and (not typed or typed.isalpha()):
            # "/sumarize": a command mistyped, not a question for the model. ("/etc/hosts?" stays a question.)
            await reply.send(f"There is no command /{typed}; {', '.join('/' + c for c in COMMANDS[1:])} are.")
            return
        incoming = Incoming(
            platform=PLATFORM,
            tenant=dm_tenant(self._user),
            channel="terminal",
            author_id=self._user,
            text=args,
            command=command,
            message_id=uuid.uuid4().hex,
            is_dm=True,
        )
        await self._core.handle(incoming, reply)

    def stop(self) -> None:
        self._stopping.set()


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "local"


class _Lines:
    """The lines typed, one at a time and only when asked for: the prompt must not be shown while an answer streams."""

    def __init__(self, read: Callable[[], str | None]) -> None:
        self._read = read
        self._wanted = threading.Semaphore(0)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        # A daemon thread: a blocking read must hold neither the event loop nor the exit.
        threading.Thread(target=self._pump, name="console-stdin", daemon=True).start()

    async def next(self) -> str | None:
        """The next line, or None at the end of input."""
        self._wanted.release()
        return await self._queue.get()

    def _pump(self) -> None:
        line: str | None = ""
        while line is not None:
            self._wanted.acquire()
            try:
                line = self._read()
            except (ValueError, OSError):  # the stream was closed under us at shutdown
                line = None
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line)


@contextlib.contextmanager
def _lines(stream: TextIO, out: TextIO) -> Iterator[_Lines]:
    """The typed lines: through readline at a terminal (see the module docstring), else line by line."""
    if isinstance(stream, io.TextIOWrapper):
        # Bytes that are not UTF-8 (a terminal set to Latin-1) become lone surrogates, which the core refuses with a
        # reason, instead of a decoding error that would end the chat as if the user had pressed Ctrl-D.
        stream.reconfigure(errors="surrogateescape")
    if stream is sys.stdin and stream.isatty() and out is sys.stdout:
        with _terminal_restored(stream):
            import readline  # input() reads through it once imported

            # Python turns readline's bracketed paste off; on, a pasted block arrives as one line, newlines and all.
            readline.parse_and_bind("set enable-bracketed-paste on")
            yield _Lines(lambda: _typed(PROMPT))
        return

    def read() -> str | None:
        out.write(PROMPT)
        out.flush()
        line = stream.readline()
        return line.rstrip("\n") if line else None

    yield _Lines(read)


def _typed(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


@contextlib.contextmanager
def _terminal_restored(stream: TextIO) -> Iterator[None]:
    """Put the terminal back as it was at exit: a stop (SIGTERM, Ctrl-C) in the middle of readline's input would
    leave it without echo."""
    import termios

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _next_or_stop(lines: _Lines, stopping: asyncio.Event) -> str | None:
    get = asyncio.ensure_future(lines.next())
    stop = asyncio.ensure_future(stopping.wait())
    done, pending = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return get.result() if get in done else None
