"""The real server (uvicorn in a subprocess) with a real HTTP client: no buffering,
disconnects and shutdown behave as in production."""

import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from chat.models import Conversation, Message
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.replies import stored_reply
from testing.sse import chunks_text, iter_data, read_until_text
from testing.upstream import server_env, token_text
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ServerFactory = Callable[..., LiveServer]

# A reply far longer than any test reads; the emulator holds it after HELD tokens,
# so it is still unfinished, with a known text sent, when a test acts on it.
LONG_REPLY = {"tokens": 500, "hold_after": 5}
HELD = token_text(LONG_REPLY["hold_after"])


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


def post_chat(
    server: LiveServer, message: str
) -> AbstractContextManager[httpx.Response]:
    return httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": message}, timeout=10
    )


@pytest.mark.parametrize("backend", ["azure_agents", "foundry", "openai"])
def test_it_relays_the_first_chunk_while_the_agent_holds_the_rest(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread, backend: str
) -> None:
    emulator.configure(hold_after=1)
    server = uvicorn_server_factory(server_env(backend, emulator))
    with post_chat(server, "Say hello") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = iter_data(response.iter_lines())
        assert next(stream)["type"] == "metadata"
        assert next(stream) == {"type": "chunk", "content": "You"}
        # The rest of the reply does not exist yet: it cannot have been buffered.
        assert len(emulator.deltas) == 1
        emulator.release()
        rest = list(stream)
    assert rest[-1]["type"] == "done"
    assert rest[-1]["full_response"] == "You said: Say hello"


def test_it_relays_the_offline_agent_progressively(
    uvicorn_server_factory: ServerFactory,
) -> None:
    # 60-odd tokens, 500 ms apart: the reply takes half a minute to write.
    server = uvicorn_server_factory({"CHAT_LOCAL_DELAY_MS": "500"})
    with post_chat(server, "hi") as response:
        stream = iter_data(response.iter_lines())
        metadata = next(stream)
        assert next(stream)["type"] == "chunk"
        # A buffered reply would arrive all at once, once written and stored.
        assert not Message.objects.filter(role="assistant").exists()
        # The turn is written as the first words go out (on one replica).
        active = Conversation.objects.filter(
            pk=metadata["conversation_id"], active_since__isnull=False
        )
        wait_until(active.exists)
    assert stored_reply().status == "interrupted"


@pytest.mark.parametrize("backend", ["azure_agents", "foundry", "openai"])
def test_it_cancels_the_upstream_run_when_the_client_disconnects(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread, backend: str
) -> None:
    emulator.configure(**LONG_REPLY)
    server = uvicorn_server_factory(server_env(backend, emulator))
    with post_chat(server, "long") as response:
        stream = iter_data(response.iter_lines())
        metadata = next(stream)
        read_until_text(stream, HELD)
    wait_until(lambda: emulator.cancelled_runs)
    reply = stored_reply()
    assert (reply.status, reply.content) == ("interrupted", HELD)
    assert emulator.cancelled_runs == [reply.upstream_run_id]
    # Stopped upstream while held: nothing was written after the client left.
    assert len(emulator.deltas) == LONG_REPLY["hold_after"]
    conversation = Conversation.objects.get(pk=metadata["conversation_id"])
    assert conversation.active_since is None


def test_it_keeps_idle_connections_alive(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(fault="hang", fault_after=1)
    server = uvicorn_server_factory(
        server_env("azure_agents", emulator, CHAT_KEEPALIVE_SECONDS="0.1")
    )
    with post_chat(server, "hi") as response:
        keepalives = 0
        for line in response.iter_lines():
            keepalives += line == ": keep-alive"
            if keepalives == 3:
                break
    wait_until(lambda: emulator.cancelled_runs)
    reply = stored_reply()
    assert (reply.status, reply.content) == ("interrupted", "You")
    assert emulator.cancelled_runs == [reply.upstream_run_id]


def test_it_stores_partial_replies_when_the_server_stops(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    emulator.configure(**LONG_REPLY)
    server = uvicorn_server_factory(
        server_env("azure_agents", emulator, CHAT_DRAIN_SECONDS="0.3"),
        "--timeout-graceful-shutdown",
        "5",
    )
    with post_chat(server, "long") as response:
        stream = iter_data(response.iter_lines())
        received = read_until_text(stream, HELD)
        server.process.send_signal(signal.SIGTERM)
        rest = list(stream)
    assert rest[-1]["type"] == "error"
    assert rest[-1]["code"] == "server_shutdown"
    # uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert server.process.wait(15) in (0, -signal.SIGTERM)
    reply = stored_reply()
    assert reply.status == "interrupted"
    assert reply.content == chunks_text(received + rest) == HELD
    assert emulator.cancelled_runs == [reply.upstream_run_id]
    assert Conversation.objects.get().active_since is None
