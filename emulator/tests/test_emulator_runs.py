"""A classic run seen by polling, as a client that lost its stream sees it: the run
goes on without its stream's client, and `runs.get` and `messages.list(run_id=)`
show where it is, through the real azure-ai-agents SDK."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.ai.agents.aio import AgentsClient
from azure.ai.agents.models import ListSortOrder, MessageDeltaChunk, ThreadMessage

from emulator import AgentsEmulator
from emulator.tests.test_emulator import make_client, new_thread
from testing.waiting import await_until

pytestmark = pytest.mark.no_database


@pytest.fixture
async def client(emulator: AgentsEmulator) -> AsyncIterator[AgentsClient]:
    async with make_client(emulator) as client:
        yield client


async def run_messages(
    client: AgentsClient, thread_id: str, run_id: str
) -> list[ThreadMessage]:
    pages = client.messages.list(
        thread_id, run_id=run_id, order=ListSortOrder.ASCENDING
    )
    return [message async for message in pages]


def text_of(message: ThreadMessage) -> str:
    return "".join(part.text.value for part in message.text_messages)


async def status_is(
    client: AgentsClient, thread_id: str, run_id: str, status: str
) -> bool:
    return (await client.runs.get(thread_id, run_id)).status == status


async def reply_reaches(emulator: AgentsEmulator, thread_id: str, text: str) -> None:
    """Waits until the run's message in the emulator holds `text`."""
    thread = emulator.threads[thread_id]
    await await_until(lambda: thread.messages[-1].text == text)


async def test_a_run_goes_on_when_its_client_leaves(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(tokens=5, hold_after=2)
    thread_id = await new_thread(client)
    responses: list[Any] = []
    stream = await client.runs.stream(
        thread_id=thread_id,
        agent_id=emulator.agent_id,
        raw_response_hook=lambda pipeline: responses.append(pipeline.http_response),
    )
    texts: list[str] = []
    async with stream as events:
        async for name, data, _ in events:
            if name == "thread.run.created":
                run_id = data.id
            if isinstance(data, MessageDeltaChunk):
                texts.append(data.text)
            if len(texts) == 2:
                break
    await responses[0].close()  # the client goes, as a process that dies does

    run = await client.runs.get(thread_id, run_id)
    assert (run.status, run.usage, run.completed_at) == ("in_progress", None, None)
    [message] = await run_messages(client, thread_id, run_id)
    assert (message.status, text_of(message)) == ("in_progress", "tok0 tok1")
    assert message.completed_at is None

    emulator.release()
    await await_until(lambda: status_is(client, thread_id, run_id, "completed"))
    run = await client.runs.get(thread_id, run_id)
    assert run.completed_at is not None
    assert run.usage.completion_tokens == 5
    assert run.usage.total_tokens == run.usage.prompt_tokens + 5
    [message] = await run_messages(client, thread_id, run_id)
    assert (message.status, text_of(message)) == (
        "completed",
        "tok0 tok1 tok2 tok3 tok4",
    )
    assert len(emulator.deltas) < 5  # the rest had nobody to go to


async def test_a_run_goes_on_while_its_client_stops_reading(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    # Far more than the socket buffers hold, to a client that never reads (a
    # frozen process, an SDK stream dropped but not closed): on the service the
    # run does not wait for it.
    piece = "x" * 2**20
    emulator.push(reply=[piece] * 12)
    thread_id = await new_thread(client)
    path = f"/api/projects/{emulator.project}/threads/{thread_id}/runs"
    body = json.dumps({"assistant_id": emulator.agent_id, "stream": True})
    request = (
        f"POST {path}?api-version=v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", emulator.port))
        await loop.sock_sendall(sock, request.encode())
        await await_until(lambda: emulator.threads[thread_id].runs)
        run_id = emulator.threads[thread_id].runs[0].id
        await await_until(lambda: status_is(client, thread_id, run_id, "completed"))
        [message] = await run_messages(client, thread_id, run_id)
        assert message.status == "completed"
        assert text_of(message) == piece * 12
        assert len(emulator.deltas) < 12


async def test_polling_shows_a_run_queued_in_progress_then_completed(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client)
    earlier = await client.runs.create(thread_id, agent_id=emulator.agent_id)
    await await_until(lambda: status_is(client, thread_id, earlier.id, "completed"))
    emulator.push(tokens=3, hold_start=True, hold_after=1)
    run = await client.runs.create(thread_id, agent_id=emulator.agent_id)
    assert run.status == "queued"
    assert (await client.runs.get(thread_id, run.id)).status == "queued"
    assert await run_messages(client, thread_id, run.id) == []

    emulator.release()
    await reply_reaches(emulator, thread_id, "tok0")
    polled = await client.runs.get(thread_id, run.id)
    assert polled.status == "in_progress" and polled.started_at is not None
    [message] = await run_messages(client, thread_id, run.id)
    assert (message.status, text_of(message)) == ("in_progress", "tok0")
    assert message.run_id == run.id and message.role == "assistant"

    emulator.release()
    await await_until(lambda: status_is(client, thread_id, run.id, "completed"))
    assert (await client.runs.get(thread_id, run.id)).usage.completion_tokens == 3
    [message] = await run_messages(client, thread_id, run.id)
    assert (message.status, text_of(message)) == ("completed", "tok0 tok1 tok2")
    # The earlier run's reply is not this run's.
    [earlier_reply] = await run_messages(client, thread_id, earlier.id)
    assert earlier_reply.id != message.id


async def test_polling_shows_a_run_cancelling_then_cancelled(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(tokens=5, hold_after=2)
    thread_id = await new_thread(client)
    run = await client.runs.create(thread_id, agent_id=emulator.agent_id)
    await reply_reaches(emulator, thread_id, "tok0 tok1")
    assert (await client.runs.cancel(thread_id, run.id)).status == "cancelling"
    await await_until(lambda: status_is(client, thread_id, run.id, "cancelled"))
    polled = await client.runs.get(thread_id, run.id)
    assert polled.cancelled_at is not None and polled.completed_at is None
    [message] = await run_messages(client, thread_id, run.id)
    assert (message.status, text_of(message)) == ("incomplete", "tok0 tok1")
    assert message.incomplete_details.reason == "run_cancelled"


async def test_polling_shows_a_failed_run_with_its_error(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(tokens=5, fault="run_failed", fault_after=2)
    thread_id = await new_thread(client)
    run = await client.runs.create(thread_id, agent_id=emulator.agent_id)
    await await_until(lambda: status_is(client, thread_id, run.id, "failed"))
    polled = await client.runs.get(thread_id, run.id)
    assert polled.failed_at is not None
    assert polled.last_error.code == "server_error" and polled.last_error.message
    [message] = await run_messages(client, thread_id, run.id)
    assert (message.status, text_of(message)) == ("incomplete", "tok0 tok1")
    assert message.incomplete_details.reason == "run_failed"
