"""The real server (uvicorn in a subprocess) with a real HTTP client: no buffering,
disconnects and shutdown behave as in production."""

import json
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from chat.models import Conversation, Message
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.upstream import server_env
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


def events(response: httpx.Response) -> Iterator[dict]:
    """Parsed `data:` payloads, yielded as soon as each frame arrives."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_it_relays_the_first_chunk_while_the_agent_holds_the_rest(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(hold_after=1)
    server = uvicorn_server_factory(server_env("azure_agents", emulator))
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "Say hello"}, timeout=10
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        assert next(stream)["type"] == "metadata"
        first = next(stream)
        assert first == {"type": "chunk", "content": "You"}
        # The rest of the reply does not exist yet: it cannot have been buffered.
        assert len(emulator.deltas) == 1
        emulator.release()
        rest = list(stream)
    assert rest[-1]["type"] == "done"
    assert rest[-1]["full_response"] == "You said: Say hello"


def test_it_relays_the_offline_agent_progressively(
    uvicorn_server_factory: ServerFactory,
) -> None:
    server = uvicorn_server_factory({"CHAT_LOCAL_DELAY_MS": "100"})
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "hi"}, timeout=30
    ) as response:
        stream = events(response)
        next(stream)
        next(stream)
        first_chunk_after = time.monotonic() - started
        for _ in stream:
            pass
        total = time.monotonic() - started
    # 60-odd tokens at 100 ms: a buffered reply would arrive all at once, at the end.
    assert first_chunk_after < total / 4


def test_it_cancels_the_upstream_run_when_the_client_disconnects(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(tokens=500, token_interval=0.02)
    server = uvicorn_server_factory(server_env("azure_agents", emulator))
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "long"}, timeout=10
    ) as response:
        stream = events(response)
        metadata = next(stream)
        received = [next(stream)["content"] for _ in range(5)]
    disconnected = time.monotonic()
    wait_until(lambda: emulator.cancelled_runs, timeout=1.0)
    wait_until(
        lambda: Message.objects.filter(role="assistant").exists(),
        timeout=1.0 - (time.monotonic() - disconnected) + 0.5,
    )
    reply = Message.objects.get(role="assistant")
    assert reply.status == "interrupted"
    assert reply.content.startswith("".join(received))
    assert emulator.cancelled_runs == [reply.upstream_run_id]
    conversation = Conversation.objects.get(pk=metadata["conversation_id"])
    assert conversation.active_since is None


def test_it_keeps_idle_connections_alive(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(fault="hang", fault_after=1)
    server = uvicorn_server_factory(
        server_env(
            "azure_agents",
            emulator,
            CHAT_KEEPALIVE_SECONDS="0.2",
            CHAT_UPSTREAM_TIMEOUT_SECONDS="1.5",
        )
    )
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "hi"}, timeout=10
    ) as response:
        lines = list(response.iter_lines())
    assert lines.count(": keep-alive") >= 4
    last = json.loads([line for line in lines if line.startswith("data: ")][-1][6:])
    assert last["code"] == "timeout"
    wait_until(lambda: emulator.cancelled_runs)


def test_it_stores_partial_replies_when_the_server_stops(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(tokens=1000, token_interval=0.02)
    server = uvicorn_server_factory(
        server_env("azure_agents", emulator, CHAT_DRAIN_SECONDS="0.3"),
        "--timeout-graceful-shutdown",
        "5",
    )
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "long"}, timeout=10
    ) as response:
        stream = events(response)
        next(stream)
        received = [next(stream)["content"] for _ in range(3)]
        server.process.send_signal(signal.SIGTERM)
        rest = list(stream)
    assert rest[-1]["type"] == "error"
    assert rest[-1]["code"] == "server_shutdown"
    # uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert server.process.wait(15) in (0, -signal.SIGTERM)
    reply = Message.objects.get(role="assistant")
    assert reply.status == "interrupted"
    assert reply.content.startswith("".join(received))
    assert emulator.cancelled_runs == [reply.upstream_run_id]
    assert Conversation.objects.get().active_since is None


OPENAI_PROTOCOLS = pytest.mark.parametrize("backend", ["foundry", "openai"])


@OPENAI_PROTOCOLS
def test_it_relays_the_first_chunk_of_the_openai_protocols_unbuffered(
    uvicorn_server_factory: ServerFactory,
    emulator: EmulatorThread,
    backend: str,
) -> None:
    emulator.configure(hold_after=1)
    server = uvicorn_server_factory(server_env(backend, emulator))
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "Say hello"}, timeout=10
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        assert next(stream)["type"] == "metadata"
        assert next(stream) == {"type": "chunk", "content": "You"}
        # The rest of the reply does not exist yet: it cannot have been buffered.
        assert len(emulator.deltas) == 1
        emulator.release()
        rest = list(stream)
    assert rest[-1]["type"] == "done"
    assert rest[-1]["full_response"] == "You said: Say hello"


@OPENAI_PROTOCOLS
def test_it_ends_the_upstream_stream_when_the_client_disconnects(
    uvicorn_server_factory: ServerFactory,
    emulator: EmulatorThread,
    backend: str,
) -> None:
    emulator.configure(tokens=500, token_interval=0.02)
    server = uvicorn_server_factory(server_env(backend, emulator))
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": "long"}, timeout=10
    ) as response:
        stream = events(response)
        metadata = next(stream)
        received = [next(stream)["content"] for _ in range(5)]
    wait_until(lambda: emulator.cancelled_runs, timeout=2.0)
    wait_until(lambda: Message.objects.filter(role="assistant").exists())
    reply = Message.objects.get(role="assistant")
    assert reply.status == "interrupted"
    assert reply.content.startswith("".join(received))
    assert emulator.cancelled_runs == [reply.upstream_run_id]
    # Stopped upstream: far fewer than the 500 tokens went out.
    assert len(emulator.deltas) < 100
    conversation = Conversation.objects.get(pk=metadata["conversation_id"])
    assert conversation.active_since is None
