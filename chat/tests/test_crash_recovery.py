"""A server killed mid-reply (kill -9: an OOM kill, a lost node) leaves nothing
taken for long: a fresh server lets the same callers chat in the same
conversations once the dead one's lease runs out, and stores what it lost as
interrupted replies."""

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from chat.models import Message
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.sse import chunks_text, iter_data, read_until_text
from testing.upstream import server_env, token_text
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

REDIS_URL = "redis://127.0.0.1:6379/14"  # this module's own database
LEASE_SECONDS = "2"


@pytest.fixture
def shared_cache() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("needs Redis on 127.0.0.1:6379")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


def ask(server: LiveServer, message: str, conversation_id: str | None = None) -> Any:
    body = {"message": message, "conversation_id": conversation_id}
    return httpx.post(f"{server.url}/api/chat", json=body, timeout=30)


def test_a_killed_server_frees_its_conversations_and_stream_slots(
    uvicorn_server_factory: Any, emulator: EmulatorThread, shared_cache: str
) -> None:
    env = server_env(
        "azure_agents",
        emulator,
        REDIS_URL=shared_cache,
        CHAT_MAX_CONCURRENT_STREAMS="2",
        CHAT_LEASE_SECONDS=LEASE_SECONDS,
    )
    doomed = uvicorn_server_factory(env)
    conversations = []
    for n in range(2):
        response = ask(doomed, f"first {n}")
        assert response.status_code == 200
        conversations.append(response.text.split('"conversation_id":"')[1][:36])

    # Both of the caller's stream slots are taken by replies the agent holds.
    emulator.configure(tokens=50, hold_after=2)
    held = []
    for conversation_id in conversations:
        body = {"message": "second", "conversation_id": conversation_id}
        stream = httpx.stream("POST", f"{doomed.url}/api/chat", json=body, timeout=30)
        response = stream.__enter__()
        lines = iter_data(response.iter_lines())
        read_until_text(lines, token_text(2))
        held.append((stream, lines))
    assert ask(doomed, "third").status_code == 429

    doomed.process.kill()
    doomed.process.wait(10)
    for stream, _lines in held:
        stream.__exit__(None, None, None)

    emulator.configure(hold_after=None, tokens=3)
    emulator.release()
    fresh = uvicorn_server_factory(env)
    for conversation_id in conversations:
        # Busy (409) or out of slots (429) until the dead server's lease ends.
        response = wait_until(
            lambda c=conversation_id: (
                (r := ask(fresh, "again", c)).status_code == 200 and r
            ),
            timeout=30,
        )
        frames = list(iter_data(response.text.splitlines()))
        assert frames[-1]["type"] == "done"
        assert chunks_text(frames) == token_text(3)

    for conversation_id in conversations:
        replies = list(
            Message.objects.filter(
                conversation_id=conversation_id, role="assistant"
            ).order_by("created_at")
        )
        assert [m.status for m in replies] == ["complete", "interrupted", "complete"]
        assert replies[1].error_code == "producer_lost"
