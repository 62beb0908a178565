"""A loopback TCP forwarder that a test can shut, as a network path to a server
(Redis, say) fails: `shut()` drops every connection and refuses new ones until
`open()`. It runs on the test's own event loop.

    async with Gate(6379) as gate:
        client = redis.Redis(port=gate.port)
        await gate.shut()
"""

import asyncio


class Gate:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def __aenter__(self) -> "Gate":
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.shut()

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port or 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        """Refuses new connections and resets the ones that are open."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except (asyncio.CancelledError, OSError):
            pass  # shut, or one side reset: both ends are dropped
        finally:
            for end in (writer, up_writer):
                if end is not None:
                    end.transport.abort()
            self._pipes.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
