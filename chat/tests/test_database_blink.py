"""PostgreSQL drops the app's connections (a failover, a restart, an idle timeout)
while replies stream and while they are being stored: every reply is stored once,
with the status its client was told, and nothing is left locked."""

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from django.db import connection

from chat.models import Conversation, Message
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer, database_url_for_subprocess
from testing.sse import chunks_text
from testing.upstream import server_env, token_text
from testing.waiting import wait_until

pytestmark = [
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL drops connections"
    ),
]

APP = "chatsite-under-test"  # the live server's connections, by application_name
STREAMS = 20
TOKENS = 8
HELD = 3


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


@pytest.fixture
def server(uvicorn_server_factory: Any, emulator: EmulatorThread) -> LiveServer:
    url = f"{database_url_for_subprocess()}?application_name={APP}"
    return uvicorn_server_factory(
        server_env("azure_agents", emulator, DATABASE_URL=url)
    )


def admin() -> psycopg.Connection:
    return psycopg.connect(database_url_for_subprocess(), autocommit=True)


def count_app_connections(what: str, where: str = "") -> int:
    """`count(what)` over the server's connections (pg_stat_activity rows), those
    matching `where` if given."""
    with admin() as db:
        row = db.execute(
            f"SELECT count({what}) FROM pg_stat_activity "
            f"WHERE application_name = %s {where}",
            [APP],
        ).fetchone()
    return row[0]


def terminate_app_connections() -> int:
    return count_app_connections("pg_terminate_backend(pid)")


def app_connections_waiting_on_a_lock() -> int:
    return count_app_connections("*", "AND wait_event_type = 'Lock'")


class Stream:
    """One POST /api/chat read as it arrives."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.progress = asyncio.Event()

    async def run(self, client: httpx.AsyncClient, message: str) -> None:
        async with client.stream("POST", "/api/chat", json={"message": message}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    self.frames.append(orjson.loads(line[6:]))
                    self.progress.set()

    @property
    def text(self) -> str:
        return chunks_text(self.frames)


async def open_streams(
    server: LiveServer, count: int
) -> tuple[httpx.AsyncClient, list[Stream], list[asyncio.Task[None]]]:
    client = httpx.AsyncClient(base_url=server.url, timeout=60)
    streams = [Stream() for _ in range(count)]
    tasks = [
        asyncio.create_task(stream.run(client, f"message {n}"))
        for n, stream in enumerate(streams)
    ]
    return client, streams, tasks


async def until(predicate: Any) -> None:
    await asyncio.to_thread(wait_until, predicate)


async def test_replies_are_stored_once_when_connections_die_mid_stream_and_mid_write(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    emulator.configure(tokens=TOKENS, hold_after=HELD)
    client, streams, tasks = await open_streams(server, STREAMS)
    await until(lambda: all(s.text == token_text(HELD) for s in streams))
    # Their turns are stored (on one replica, once the first words are out):
    # the app's pool is open.
    await until(lambda: Conversation.objects.count() == STREAMS)

    # Mid-stream: every connection the app holds or keeps in its pool dies.
    assert await asyncio.to_thread(terminate_app_connections) >= 1

    # At the final write: the replies' INSERTs wait on a table lock, and their
    # connections die while they wait.
    with psycopg.connect(database_url_for_subprocess()) as locker:
        locker.execute("LOCK TABLE chat_message IN EXCLUSIVE MODE")
        emulator.configure(hold_after=None)
        emulator.release()
        await until(app_connections_waiting_on_a_lock)
        assert await asyncio.to_thread(terminate_app_connections) >= 1
        locker.rollback()

    await asyncio.gather(*tasks)
    text = token_text(TOKENS)
    for stream in streams:
        assert stream.frames[-1]["type"] == "done", stream.frames[-1]
        assert stream.frames[-1]["status"] == "complete"
        assert stream.text == text

    replies = [m async for m in Message.objects.filter(role="assistant")]
    assert len(replies) == STREAMS
    assert {m.content for m in replies} == {text}
    assert {m.status for m in replies} == {Message.Status.COMPLETE}
    assert not await Conversation.objects.filter(active_since__isnull=False).aexists()

    # Nothing dead is handed out afterwards, and every conversation takes its
    # next message.
    statuses = [(await client.get("/api/posts")).status_code for _ in range(5)]
    assert statuses == [200] * 5
    async for conversation in Conversation.objects.all()[:3]:
        body = {"message": "again", "conversation_id": str(conversation.pk)}
        response = await client.post("/api/chat", json=body)
        assert response.status_code == 200
        assert '"type":"done"' in response.text
    await client.aclose()


async def test_a_reply_that_cannot_be_stored_ends_with_not_saved_and_frees_the_lock(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    emulator.configure(tokens=TOKENS)
    # The database refuses this reply (and only it) for as long as the test says.
    with admin() as db:
        db.execute(
            "ALTER TABLE chat_message ADD CONSTRAINT refuse_tok2 "
            "CHECK (content NOT LIKE '%%tok2%%') NOT VALID"
        )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            response = await client.post("/api/chat", json={"message": "hi"})
    finally:
        with admin() as db:
            db.execute("ALTER TABLE chat_message DROP CONSTRAINT refuse_tok2")
    last = [line for line in response.text.splitlines() if line.startswith("data: ")][
        -1
    ]
    assert '"type":"error"' in last and '"code":"not_saved"' in last
    assert not await Message.objects.filter(role="assistant").aexists()
    assert not await Conversation.objects.filter(active_since__isnull=False).aexists()
