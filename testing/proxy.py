"""A loopback TCP proxy that delivers a server's responses the way a real network
path does: re-split into random reads.

Every response is forwarded in writes of 1 to 1448 bytes (one TCP segment's
payload at most), each flushed before the next, so a client meets frames, lines
and UTF-8 characters cut anywhere. The sizes come from a seeded RNG, one per
connection, so a failing split can be replayed. A connection can also be cut
after a number of response bytes, as a dropped mobile connection is, and a test
can act when some bytes have reached the client (`when_forwarded`).

    with SplittingProxy(server.url) as proxy:
        httpx.post(f"{proxy.url}/api/chat", ...)
"""

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from emulator.threaded import LoopThread

MAX_WRITE = 1448
READ_SIZE = 65536


@dataclass
class ProxiedConnection:
    """What went through one client connection, in each direction."""

    index: int
    request: bytearray = field(default_factory=bytearray)
    response: bytearray = field(default_factory=bytearray)
    cut_after: int | None = None
    writes: int = 0
    cut: bool = False


@dataclass
class _Trigger:
    pattern: bytes
    action: Callable[[], object]
    connection: int | None
    fired: set[int] = field(default_factory=set)


class SplittingProxy(LoopThread):
    """Forwards 127.0.0.1:`port` to `upstream_url`, re-splitting responses.

    Runs on its own event loop in a daemon thread; every method is thread-safe.
    """

    thread_name = "splitting-proxy"

    def __init__(self, upstream_url: str, *, seed: int = 0) -> None:
        super().__init__()
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._seed = seed
        self._lock = threading.Lock()
        self._connections: list[ProxiedConnection] = []
        self._cuts: list[int] = []
        self._triggers: list[_Trigger] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> list[ProxiedConnection]:
        with self._lock:
            return list(self._connections)

    def cut_next(self, after_bytes: int) -> None:
        """Closes the next new connection once `after_bytes` (at least 1) of its
        response have reached the client (queued: one cut per call)."""
        if after_bytes < 1:
            raise ValueError("a cut comes after at least one response byte")
        with self._lock:
            self._cuts.append(after_bytes)

    def when_forwarded(
        self,
        pattern: bytes,
        action: Callable[[], object],
        *,
        connection: int | None = None,
    ) -> None:
        """Calls `action`, on the proxy's thread, as soon as `pattern` has been
        written to a client: once on connection number `connection`, or by
        default once on each connection (a client's retry is a new one). The
        write that completes the pattern has been flushed by then."""
        with self._lock:
            self._triggers.append(_Trigger(pattern, action, connection))

    # -- lifecycle -------------------------------------------------------------

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._handlers.discard(task)

    # -- one connection ----------------------------------------------------------

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            record = ProxiedConnection(len(self._connections))
            if self._cuts:
                record.cut_after = self._cuts.pop(0)
            self._connections.append(record)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self._upstream
            )
        except OSError:
            client_writer.close()
            return
        rng = random.Random(f"{self._seed}:{record.index}")
        requests = asyncio.create_task(
            self._forward_requests(client_reader, upstream_writer, record)
        )
        responses = asyncio.create_task(
            self._forward_responses(upstream_reader, client_writer, record, rng)
        )
        try:
            # Either side closing ends the connection on both: a client that goes
            # away is a disconnect the server must see, and vice versa.
            await asyncio.wait(
                {requests, responses}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (requests, responses):
                task.cancel()
            await asyncio.gather(requests, responses, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _forward_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ProxiedConnection,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(READ_SIZE):
                record.request.extend(data)
                writer.write(data)
                await writer.drain()

    async def _forward_responses(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ProxiedConnection,
        rng: random.Random,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(READ_SIZE):
                view = memoryview(data)
                while view:
                    size = rng.randint(1, MAX_WRITE)
                    if record.cut_after is not None:
                        size = min(size, record.cut_after - len(record.response))
                    piece, view = view[:size], view[size:]
                    writer.write(piece)
                    await writer.drain()
                    record.response.extend(piece)
                    record.writes += 1
                    self._fire_triggers(record, len(piece))
                    if len(record.response) == record.cut_after:
                        record.cut = True
                        return

    def _fire_triggers(self, record: ProxiedConnection, written: int) -> None:
        fired = []
        with self._lock:
            for trigger in self._triggers:
                wanted = trigger.connection in (None, record.index)
                if not wanted or record.index in trigger.fired:
                    continue
                # A match must end in the bytes just written to be a new one.
                start = len(record.response) - written - len(trigger.pattern) + 1
                if record.response.find(trigger.pattern, max(0, start)) != -1:
                    trigger.fired.add(record.index)
                    fired.append(trigger)
        for trigger in fired:
            trigger.action()
