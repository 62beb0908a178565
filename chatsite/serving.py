"""How uvicorn serves the app: its event loop and its HTTP protocol.

    uvicorn chatsite.asgi:application --loop chatsite.serving:new_event_loop \
        --http chatsite.serving:HttpToolsProtocol

The loop is uvloop, whose listening sockets accept every waiting connection when
they wake. libuv (since 1.45) accepts one connection per wake-up of a listening
socket and relies on the next poll for the next one; uvloop polls once per turn
of its loop, and a turn runs every callback that is ready. Under a burst of new
chats a turn takes milliseconds, so connections wait in the kernel's accept
queue about one turn each: of 1,000 connects at once, hundreds were still
un-accepted after 2.5 s (`bench/run.py --scenario burst`), where asyncio's loop,
which accepts up to the backlog at a time, took them all within 0.12 s. Here a
listening socket is a reader of the loop that accepts until the queue is empty
(at most `backlog` at a time) and hands each connection to uvloop's transport
(`connect_accepted_socket`); the rest of the loop is uvloop's.

The protocol is uvicorn's httptools one with a bound on the request head:
httptools has none (it buffers a header however long it grows), and h11, which
has one, costs a tenth to a sixth of the deltas relayed per CPU-second in
Python (`bench/run.py --scenario fast`: 39,604 against 47,059).
"""

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop
from uvicorn.protocols.http import httptools_impl

logger = logging.getLogger(__name__)

# After the process runs out of file descriptors (or memory for a socket), the
# listening sockets rest this long before accepting again, as asyncio's loop does.
ACCEPT_RETRY_SECONDS = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def new_event_loop() -> "AcceptingLoop":
    """uvicorn's `--loop` hook: a new loop (one per process)."""
    return AcceptingLoop()


class AcceptingLoop(uvloop.Loop):
    """uvloop, with `create_server` serving plain TCP through `Listener`."""

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Iterable[str] | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if (
            ssl is not None
            or options
            or (sock is not None and sock.family == socket.AF_UNIX)
        ):
            return await super().create_server(
                protocol_factory,
                host,
                port,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                **options,
            )
        if sock is not None:
            sockets = [sock]
        else:
            sockets = await self._bound_sockets(host, port)
        return Listener(self, protocol_factory, sockets, backlog)

    async def _bound_sockets(
        self, host: str | Iterable[str] | None, port: int | None
    ) -> list[socket.socket]:
        """A socket bound to each address `host` names, as asyncio binds them."""
        hosts = [host] if host is None or isinstance(host, str) else list(host)
        addresses = set()
        for name in hosts:
            infos = await self.getaddrinfo(
                name or None,
                port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
            addresses.update((family, address) for family, _, _, _, address in infos)
        sockets = []
        try:
            for family, address in sorted(addresses):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets


class Listener(asyncio.AbstractServer):
    """Listening sockets that accept every connection waiting when they wake."""

    def __init__(
        self,
        loop: AcceptingLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sockets: list[socket.socket],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._sockets = sockets
        self._backlog = backlog
        self._serving = False
        self._closed = asyncio.Event()
        self._resume: asyncio.TimerHandle | None = None
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(backlog)
        self._start()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def _start(self) -> None:
        self._resume = None
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._start)

    def _accept(self, listening: socket.socket) -> None:
        # Bounded, as asyncio's is: other readers get their turn after a backlog.
        for _ in range(self._backlog):
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                logger.error(
                    "accepting connections failed (%s); trying again in %g s",
                    exc.strerror,
                    ACCEPT_RETRY_SECONDS,
                )
                self._pause()
                return
            connection.setblocking(False)
            self._loop.create_task(self._serve(connection))

    async def _serve(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, connection)
        except OSError:
            # The client left before its transport was made.
            connection.close()

    def close(self) -> None:
        if not self._sockets:
            return
        if self._resume is not None:
            self._resume.cancel()
        elif self._serving:
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        self._serving = False
        self._closed.set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """It serves from the start."""

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def wait_closed(self) -> None:
        """Closed once `close()` closed its sockets; uvicorn waits for its
        connections itself."""
        await self._closed.wait()


# Request heads (the request line and the headers) longer than this are refused:
# above the 60 KiB that Azure Container Apps' ingress (Envoy) lets through.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
_HEAD_TOO_LARGE = (
    b'{"error": "request head is larger than %d bytes", "code": "head_too_large"}'
    % MAX_REQUEST_HEAD_BYTES
)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 and closing the connection
    when a request's head (up to its blank line) is longer than
    MAX_REQUEST_HEAD_BYTES: checked on what arrives while a head is incomplete,
    before the parser buffers it."""

    # Slots: two more entries in uvicorn's per-connection attribute dictionary
    # made it the next size up, a kilobyte or two of every open stream.
    __slots__ = ("_head_bytes", "_head_tail")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes received of the current head; -1 while a body is read.
        self._head_bytes = 0
        # The head's last three bytes so far: its blank line may span two reads.
        self._head_tail = b""

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._head_bytes >= 0:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            if end >= 0:
                size = self._head_bytes - len(self._head_tail) + end + 4
            else:
                size = self._head_bytes + len(data)
            if size > MAX_REQUEST_HEAD_BYTES:
                self._refuse_head()
                return
            self._head_bytes += len(data)
            self._head_tail = seen[-3:]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request's head, on a kept-alive connection.
        self._head_bytes, self._head_tail = 0, b""

    def _refuse_head(self) -> None:
        self.logger.warning(
            "Request head larger than %d bytes.", MAX_REQUEST_HEAD_BYTES
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Sent behind a response still going out (a pipelined request):
            # an answer now would land inside that response's body.
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-content-type-options: nosniff\r\n"
            b"connection: close\r\n\r\n%s" % (len(_HEAD_TOO_LARGE), _HEAD_TOO_LARGE)
        )
        self.transport.close()
