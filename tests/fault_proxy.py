"""A TCP proxy of the tests' own that stands between the service and a real server and fails on demand.

Modes, switched at any time with `set_mode`:
  - ``pass``: bytes flow both ways, as if the proxy were not there;
  - ``refuse``: nothing listens on the port any more, so new connections are refused by the operating system, and
    connections already open are cut;
  - ``drop``: connections already open are cut (reset), new ones are accepted and cut at once;
  - ``blackhole``: connections are accepted and whatever is sent is swallowed; nothing ever comes back, as from a
    server that hangs or a firewall that drops packets. Connections already open go silent too.

It listens on 127.0.0.1 only, on a port the operating system picks, and runs on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["pass", "refuse", "drop", "blackhole"]
_CHUNK = 1 << 16


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._mode: Mode = "pass"
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0  # accepted so far, in any mode

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def close(self) -> None:
        await self._stop_listening()
        self._cut_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def set_mode(self, mode: Mode) -> None:
        previous, self._mode = self._mode, mode
        if mode in ("refuse", "drop"):
            self._cut_all()
        if mode == "refuse":
            await self._stop_listening()
        elif previous == "refuse":
            await self._listen()
        log.info("fault proxy: %s -> %s", previous, mode)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        # The same port again after `refuse`, so the service's URL stays valid.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._mode in ("drop", "refuse"):
                _reset(writer)
                return
            self._writers.add(writer)
            if self._mode == "blackhole":
                await _swallow(reader)
                return
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if self._mode == "blackhole":
                    continue  # an open connection that goes silent: swallow, answer nothing
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            _reset(writer)


async def _swallow(reader: asyncio.StreamReader) -> None:
    while await reader.read(_CHUNK):
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a dropped route looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
