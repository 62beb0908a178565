"""The event loop uvicorn serves with (chatsite/serving.py): uvloop whose
listening sockets accept every waiting connection when they wake.

Connections are made for real on loopback and left in the kernel's accept queue
while the loop is kept from polling; what is measured is how many turns of the
loop it takes to accept them all, counted by a callback that schedules itself
once per turn (no clock involved).
"""

import asyncio
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from chatsite import serving

WAITING = 200


class Counting(asyncio.Protocol):
    """Counts the connections made; closes each at once."""

    def __init__(self, made: Callable[[], None]) -> None:
        self._made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made()
        transport.close()


def run(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


async def turns_to_accept(count: int, **server_options: Any) -> int:
    """Makes `count` connections while the loop cannot poll, then lets it run:
    how many turns of the loop went by until the server had them all."""
    loop = asyncio.get_running_loop()
    made = 0
    all_made = loop.create_future()

    def one_made() -> None:
        nonlocal made
        made += 1
        if made == count and not all_made.done():
            all_made.set_result(None)

    server = await loop.create_server(
        lambda: Counting(one_made), "127.0.0.1", 0, backlog=1024, **server_options
    )
    port = server.sockets[0].getsockname()[1]
    clients = []
    try:
        # Blocking connects, in this turn: the kernel completes each handshake
        # and queues the connection until the server accepts it.
        for _ in range(count):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        turns = 0

        def tick() -> None:
            nonlocal turns
            turns += 1
            if not all_made.done():
                loop.call_soon(tick)

        loop.call_soon(tick)
        await asyncio.wait_for(all_made, timeout=60)
        return turns
    finally:
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()


def test_a_listening_socket_accepts_every_waiting_connection_in_one_turn() -> None:
    turns = run(serving.new_event_loop(), turns_to_accept(WAITING))
    # The turn that accepts them all, and the one that runs their protocols.
    assert turns <= 3


def test_uvloop_alone_takes_a_turn_per_connection() -> None:
    """Why the loop exists: libuv accepts one connection per wake-up. If this
    fails, uvloop accepts greedily again and chatsite.serving can go."""
    turns = run(uvloop.new_event_loop(), turns_to_accept(WAITING))
    assert turns >= WAITING // 2


def test_the_server_names_its_socket_and_refuses_after_close() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        assert isinstance(server, serving.Listener)
        assert server.is_serving()
        assert server.get_loop() is loop
        (sock,) = server.sockets
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port)).close()

    run(serving.new_event_loop(), main())


def test_a_given_socket_is_served() -> None:
    """uvicorn hands over the socket it bound (several workers, --fd)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        made = loop.create_future()
        server = await loop.create_server(
            lambda: Counting(lambda: made.set_result(None)), sock=sock
        )
        assert server.sockets == (sock,)
        client = socket.create_connection(("127.0.0.1", port))
        try:
            await asyncio.wait_for(made, timeout=30)
        finally:
            client.close()
            server.close()

    run(serving.new_event_loop(), main())


def test_out_of_file_descriptors_it_rests_then_accepts_again() -> None:
    """Past the process's file limit, accept() fails with EMFILE: the listening
    socket stops waking the loop (a readable socket that cannot be accepted would
    wake it at every turn) and accepts again a second later."""
    script = textwrap.dedent(
        """
        import asyncio, logging, os, resource, socket
        from chatsite import serving

        async def main():
            loop = asyncio.get_running_loop()
            transports = []
            both = loop.create_future()
            resting = asyncio.Event()

            class Rest(logging.Handler):
                def emit(self, record):
                    print(record.getMessage(), flush=True)
                    resting.set()

            logging.getLogger("chatsite.serving").addHandler(Rest())

            class Keep(asyncio.Protocol):
                def connection_made(self, transport):
                    transports.append(transport)
                    if len(transports) == 2 and not both.done():
                        both.set_result(None)

            server = await loop.create_server(Keep, "127.0.0.1", 0, backlog=64)
            port = server.sockets[0].getsockname()[1]
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            # The client's two sockets are made first; then no descriptor is
            # left for the server to accept them with.
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            used = len(os.listdir("/proc/self/fd")) - 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))
            await asyncio.wait_for(resting.wait(), timeout=30)
            for _ in range(50):  # turns of the loop, the queue still waiting
                await asyncio.sleep(0)
            assert transports == [], transports
            # Room again: once it rests a second, it accepts both.
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            await asyncio.wait_for(both, timeout=30)
            assert server.is_serving()
            print("accepted", len(transports), flush=True)
            for client in clients:
                client.close()
            server.close()

        asyncio.run(main(), loop_factory=serving.new_event_loop)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "accepting connections failed (Too many open files); trying again in 1 s",
        "accepted 2",
    ]
