"""The foundry backend: azure-ai-projects 2.x and the openai client over loopback
HTTP against the emulator's Responses API, driven through POST /api/chat. Each
fault ends in its documented error code, and the database holds the user message
and whatever part of the reply arrived."""

import asyncio

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator
from testing.sse import chat, data_frames, parse_sse, read_stream
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)


async def reply_of(client: AsyncClient, message: str = "Say hello", **fields):
    return data_frames(await read_stream(await chat(client, message, **fields)))


async def stored_reply() -> Message:
    return await Message.objects.aget(role="assistant")


def operations(emulator: AgentsEmulator) -> list[str | None]:
    return [r.operation for r in emulator.requests]


async def test_it_streams_the_agents_reply(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert data[0]["backend"] == "foundry"
    assert data[0]["agent"] == FOUNDRY_AGENT_NAME
    assert data[0]["thread_id"].startswith("conv_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"]["total_tokens"] == data[-1]["usage"]["prompt_tokens"] + 4
    reply = await stored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("resp_")
    assert operations(foundry) == ["conversations.create", "responses.create"]
    create = foundry.requests[1]
    assert create.path == "/api/projects/emulator/openai/v1/responses"
    assert create.headers["Authorization"] == "Bearer dev-token"
    assert create.body == {
        "stream": True,
        "conversation": data[0]["thread_id"],
        "input": "Say hello",
        "agent_reference": {"name": FOUNDRY_AGENT_NAME, "type": "agent_reference"},
    }


async def test_it_names_the_agent_version_when_configured(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.AZURE_AI_AGENT_VERSION = "1"
    data = await reply_of(async_client)
    assert data[-1]["type"] == "done"
    assert data[0]["agent"] == f"{FOUNDRY_AGENT_NAME} (version 1)"
    reference = foundry.requests[-1].body["agent_reference"]
    assert reference["version"] == "1"


async def test_it_needs_one_upstream_call_per_follow_up(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    before = len(foundry.requests)
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    calls = foundry.requests[before:]
    assert [r.operation for r in calls] == ["responses.create"]
    assert calls[0].body["input"] == "two"
    conversation = foundry.conversations[first[0]["thread_id"]]
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 2


async def test_it_passes_citations_through(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.configure(annotations=True)
    data = await reply_of(async_client)
    citations = [d for d in data if d["type"] == "annotation"]
    assert [c["kind"] for c in citations] == ["url_citation", "file_citation"]
    url, file = citations
    assert url["url"].startswith("https://") and url["title"]
    assert file["file_id"] and file["title"] == "agents-overview.md"
    assert data[-1]["full_response"] == "You said: Say hello"
    reply = await stored_reply()
    assert reply.annotations == [
        {k: v for k, v in c.items() if k != "type"} for c in citations
    ]


async def test_it_starts_a_new_conversation_when_the_old_one_is_gone(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    del foundry.conversations[first[0]["thread_id"]]
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_reset"] is True
    assert second[0]["previous_thread_id"] == first[0]["thread_id"]
    assert second[0]["thread_id"] != first[0]["thread_id"]
    assert second[0]["thread_id"] in foundry.conversations
    assert second[-1]["full_response"] == "You said: two"
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id == second[0]["thread_id"]


async def test_it_fails_the_run_when_the_agent_does_not_exist(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.AZURE_AI_AGENT_NAME = "nobody"
    data = await reply_of(async_client)
    assert data[-1]["code"] == "run_failed"
    assert "nobody" in data[-1]["message"]
    # The new conversation is kept, so a retry does not make another.
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id in foundry.conversations


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("http_401", "upstream_auth"),
        ("http_403", "upstream_auth"),
        ("http_404", "run_failed"),
        ("http_429", "rate_limited"),
        ("http_500_json", "upstream_unavailable"),
        ("http_500_html", "upstream_unavailable"),
        ("run_failed", "run_failed"),
        ("error_event", "upstream_unavailable"),
        ("disconnect", "upstream_disconnected"),
        ("incomplete", "incomplete"),
        ("max_tokens", "incomplete"),
        ("content_filter", "incomplete"),
    ],
)
async def test_it_maps_each_fault_to_its_code(
    async_client: AsyncClient, foundry: AgentsEmulator, fault: str, code: str
) -> None:
    foundry.push(fault=fault, fault_after=2)
    data = await reply_of(async_client)
    assert data[0]["type"] == "metadata"
    assert data[-1]["type"] == "error"
    assert data[-1]["code"] == code
    assert data[-1]["message"]
    assert "Traceback" not in data[-1]["message"]
    user = await Message.objects.aget(role="user")
    reply = await stored_reply()
    assert user.content == "Say hello"
    assert (reply.status, reply.error_code) == ("failed", code)
    streamed = "".join(d["content"] for d in data if d["type"] == "chunk")
    assert reply.content == streamed
    if not fault.startswith("http_"):
        assert streamed == "You said:", "the part sent before the fault is kept"
    conversation = await Conversation.objects.aget()
    assert conversation.active_since is None
    assert conversation.upstream_thread_id.startswith("conv_")


async def test_it_says_why_a_reply_is_incomplete(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.push(fault="max_tokens")
    assert "token limit" in (await reply_of(async_client))[-1]["message"]
    foundry.push(fault="content_filter")
    data = await reply_of(async_client)
    assert "content filter" in data[-1]["message"]


async def test_it_reports_retry_after_on_rate_limits(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.push(fault="http_429_retry_after", retry_after=7)
    data = await reply_of(async_client)
    assert data[-1]["code"] == "rate_limited"
    assert data[-1]["retry_after"] == 7


async def test_it_retries_a_failed_response_when_configured(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_RETRIES = 2
    foundry.push(fault="http_500_json")
    data = await reply_of(async_client)
    assert data[-1]["type"] == "done"
    statuses = [r.status for r in foundry.requests if r.operation == "responses.create"]
    assert statuses == [500, 200]


async def test_it_answers_unavailable_when_nothing_listens(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    await foundry.stop()
    data = await reply_of(async_client)
    assert data[-1]["code"] == "upstream_unavailable"
    assert (await stored_reply()).status == "failed"


async def test_it_closes_a_silent_response_after_the_timeout(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_TIMEOUT_SECONDS = 0.3
    settings.CHAT_KEEPALIVE_SECONDS = 0.1
    foundry.push(fault="hang", fault_after=1)
    frames = await read_stream(await chat(async_client))
    assert any(frame.get("comment") == "keep-alive" for frame in frames)
    assert data_frames(frames)[-1]["code"] == "timeout"
    reply = await stored_reply()
    assert (reply.status, reply.error_code) == ("failed", "timeout")
    await await_until(lambda: foundry.cancelled_runs)
    assert foundry.cancelled_runs == [reply.upstream_run_id]


async def test_it_stops_the_response_when_stopped(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.configure(tokens=200, token_interval=0.01)
    response = await chat(async_client)
    stream = aiter(response.streaming_content)
    raw = b""
    while raw.count(b'"chunk"') < 3:
        raw += await anext(stream)
    conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
    stopped = await async_client.post(f"/api/chat/{conversation_id}/stop")
    assert stopped.status_code == 200
    raw += b"".join([part async for part in stream])
    done = data_frames(parse_sse(raw))[-1]
    assert (done["type"], done["status"]) == ("done", "cancelled")
    reply = await stored_reply()
    assert reply.status == "cancelled"
    assert reply.content == done["full_response"]
    await await_until(lambda: foundry.cancelled_runs)
    assert foundry.cancelled_runs == [reply.upstream_run_id]
    upstream = foundry.responses[reply.upstream_run_id]
    assert upstream.status == "cancelled"
    assert upstream.text.startswith(reply.content)
    # Asked too, though the service cancels only background responses.
    cancels = [r for r in foundry.requests if r.operation == "responses.cancel"]
    assert [r.status for r in cancels] == [400]


async def test_it_stops_the_response_when_the_client_goes_away(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.configure(tokens=200, token_interval=0.01)
    response = await chat(async_client)
    chunks = asyncio.Event()
    received: list[bytes] = []

    async def consume() -> None:
        async for part in response.streaming_content:
            received.append(part)
            if b"".join(received).count(b'"chunk"') >= 3:
                chunks.set()

    task = asyncio.create_task(consume())
    await chunks.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    reply = await stored_reply()
    assert reply.status == "interrupted"
    await await_until(lambda: foundry.cancelled_runs)
    assert foundry.cancelled_runs == [reply.upstream_run_id]


async def test_it_deletes_the_upstream_conversation_with_the_conversation(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    data = await reply_of(async_client)
    response = await async_client.delete(
        f"/api/conversations/{data[0]['conversation_id']}"
    )
    assert response.status_code == 204
    assert data[0]["thread_id"] not in foundry.conversations
    assert await Conversation.objects.acount() == 0


async def test_it_is_not_ready_without_configuration(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_BACKEND = "foundry"
    settings.AZURE_AI_PROJECT_ENDPOINT = ""
    settings.AZURE_AI_AGENT_NAME = ""
    response = await async_client.get("/api/health/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["chat_backend"]


@pytest.mark.parametrize(
    ("endpoint", "credential", "problem"),
    [
        ("https://x.services.ai.azure.com/api/projects/p", "dev", "loopback"),
        ("http://127.0.0.1:1/api/projects/p", "default", "needs AZURE_AI_CREDENTIAL"),
        ("http://example.com/api/projects/p", "default", "https"),
    ],
)
def test_it_refuses_unsafe_credential_setups(
    settings, endpoint: str, credential: str, problem: str
) -> None:
    from chat.backends.foundry import FoundryBackend

    settings.AZURE_AI_PROJECT_ENDPOINT = endpoint
    settings.AZURE_AI_AGENT_NAME = "my-agent"
    settings.AZURE_AI_AGENT_VERSION = ""
    settings.AZURE_AI_CREDENTIAL = credential
    problems = FoundryBackend().configuration_problems()
    assert any(problem in p for p in problems)
