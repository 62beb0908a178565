"""The azure_agents backend: the real SDK over loopback HTTP against the emulator,
driven through POST /api/chat. Each fault ends in its documented error code, and
the database holds the user message and whatever part of the reply arrived."""

import asyncio

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import chat, data_frames, parse_sse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def reply_of(client: AsyncClient, message: str = "Say hello", **fields):
    return data_frames(await read_stream(await chat(client, message, **fields)))


async def stored_reply() -> Message:
    return await Message.objects.aget(role="assistant")


async def test_it_streams_the_agents_reply(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert data[0]["backend"] == "azure_agents"
    assert data[0]["thread_id"].startswith("thread_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"]["total_tokens"] > 0
    reply = await stored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("run_")
    auth = azure.requests[0].headers["Authorization"]
    assert auth == "Bearer dev-token"


async def test_it_needs_two_upstream_calls_per_reply(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    before = len(azure.requests)
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    calls = [r for r in azure.requests[before:] if r.operation != "agents.get"]
    assert [r.operation for r in calls] == ["runs.create"]
    assert calls[0].body["additional_messages"] == [{"role": "user", "content": "two"}]
    thread = azure.threads[first[0]["thread_id"]]
    assert [m.role for m in thread.messages] == ["user", "assistant"] * 2


async def test_it_passes_citations_through(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.configure(annotations=True)
    data = await reply_of(async_client)
    citations = [d for d in data if d["type"] == "annotation"]
    kinds = {c["kind"] for c in citations}
    assert kinds == {"url_citation", "file_citation"}
    url = next(c for c in citations if c["kind"] == "url_citation")
    assert url["url"].startswith("http")
    reply = await stored_reply()
    assert len(reply.annotations) == len(citations)


async def test_it_starts_a_new_thread_when_the_old_one_is_gone(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    azure.push(fault="http_404")
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_reset"] is True
    assert second[0]["previous_thread_id"] == first[0]["thread_id"]
    assert second[0]["thread_id"] != first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id == second[0]["thread_id"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("http_401", "upstream_auth"),
        ("http_403", "upstream_auth"),
        ("http_429", "rate_limited"),
        ("http_500_json", "upstream_unavailable"),
        ("http_500_html", "upstream_unavailable"),
        ("run_failed", "run_failed"),
        ("error_event", "upstream_unavailable"),
        ("disconnect", "upstream_disconnected"),
        ("incomplete", "incomplete"),
    ],
)
async def test_it_maps_each_fault_to_its_code(
    async_client: AsyncClient, azure: AgentsEmulator, fault: str, code: str
) -> None:
    azure.push(fault=fault, fault_after=2)
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
    if fault in ("disconnect", "incomplete", "run_failed", "error_event"):
        assert streamed, "the part sent before the fault is kept"
    conversation = await Conversation.objects.aget()
    assert conversation.active_since is None


async def test_it_reports_retry_after_on_rate_limits(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.push(fault="http_429_retry_after", retry_after=7)
    data = await reply_of(async_client)
    assert data[-1]["code"] == "rate_limited"
    assert data[-1]["retry_after"] == 7


async def test_it_retries_a_failed_run_creation_when_configured(
    async_client: AsyncClient, azure: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_RETRIES = 2
    azure.push(fault="http_500_json")
    data = await reply_of(async_client)
    assert data[-1]["type"] == "done"
    assert [r.status for r in azure.requests if r.operation == "runs.create"] == [
        500,
        200,
    ]


async def test_it_answers_unavailable_when_nothing_listens(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    await azure.stop()
    data = await reply_of(async_client)
    assert data[-1]["code"] == "upstream_unavailable"
    assert (await stored_reply()).status == "failed"


async def test_it_cancels_a_silent_run_after_the_timeout(
    async_client: AsyncClient, azure: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_TIMEOUT_SECONDS = 0.3
    settings.CHAT_KEEPALIVE_SECONDS = 0.1
    azure.push(fault="hang", fault_after=1)
    frames = await read_stream(await chat(async_client))
    assert any(frame.get("comment") == "keep-alive" for frame in frames)
    data = data_frames(frames)
    assert data[-1]["code"] == "timeout"
    reply = await stored_reply()
    assert (reply.status, reply.error_code) == ("failed", "timeout")
    assert azure.cancelled_runs == [reply.upstream_run_id]


async def test_it_cancels_the_run_when_stopped(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.configure(tokens=200, token_interval=0.01)
    response = await chat(async_client)
    stream = aiter(response.streaming_content)
    raw = b""
    while raw.count(b'"chunk"') < 3:
        raw += await anext(stream)
    conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
    assert (
        await async_client.post(f"/api/chat/{conversation_id}/stop")
    ).status_code == 200
    raw += b"".join([part async for part in stream])
    done = data_frames(parse_sse(raw))[-1]
    assert (done["type"], done["status"]) == ("done", "cancelled")
    reply = await stored_reply()
    assert reply.status == "cancelled"
    assert azure.cancelled_runs == [reply.upstream_run_id]
    assert reply.content == done["full_response"]


async def test_it_cancels_the_run_when_the_client_goes_away(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.configure(tokens=200, token_interval=0.01)
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
    assert azure.cancelled_runs == [reply.upstream_run_id]


async def test_it_never_sends_a_foreign_thread_upstream(
    azure: AgentsEmulator, django_user_model
) -> None:
    alice, mallory = AsyncClient(), AsyncClient()
    await alice.aforce_login(await django_user_model.objects.acreate_user("alice"))
    await mallory.aforce_login(await django_user_model.objects.acreate_user("mallory"))
    thread_id = (await reply_of(alice))[0]["thread_id"]
    before = len(azure.requests)
    response = await chat(mallory, "steal", thread_id=thread_id)
    assert response.status_code == 404
    assert len(azure.requests) == before


async def test_it_deletes_the_upstream_thread_with_the_conversation(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    data = await reply_of(async_client)
    response = await async_client.delete(
        f"/api/conversations/{data[0]['conversation_id']}"
    )
    assert response.status_code == 204
    assert data[0]["thread_id"] not in azure.threads
    assert await Conversation.objects.acount() == 0


async def test_it_is_not_ready_without_configuration(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_BACKEND = "azure_agents"
    settings.AZURE_AI_PROJECT_ENDPOINT = ""
    settings.AZURE_AI_AGENT_ID = ""
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
async def test_it_refuses_unsafe_credential_setups(
    settings, endpoint: str, credential: str, problem: str
) -> None:
    from chat.backends.azure_agents import AzureAgentsBackend

    settings.AZURE_AI_PROJECT_ENDPOINT = endpoint
    settings.AZURE_AI_AGENT_ID = "asst_x"
    settings.AZURE_AI_CREDENTIAL = credential
    problems = AzureAgentsBackend().configuration_problems()
    assert any(problem in p for p in problems)


def test_it_derives_the_project_endpoint_like_the_old_service(settings) -> None:
    from chat.backends.azure_agents import project_endpoint

    settings.AZURE_AI_PROJECT_ENDPOINT = ""
    settings.AZURE_AI_ENDPOINT = "https://cog-x.cognitiveservices.azure.com/"
    settings.AZURE_AI_PROJECT_NAME = "project-x"
    assert project_endpoint() == (
        "https://cog-x.services.ai.azure.com/api/projects/project-x"
    )


async def test_it_relays_and_stores_long_replies_exactly(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.configure(tokens=1000)
    data = await reply_of(async_client)
    expected = "".join(delta.text for delta in azure.deltas)
    chunks = "".join(d["content"] for d in data if d["type"] == "chunk")
    assert chunks == data[-1]["full_response"] == expected
    assert (await stored_reply()).content == expected
