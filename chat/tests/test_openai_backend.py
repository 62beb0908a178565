"""The openai backend: the openai client's chat completions over loopback HTTP
against the emulator, driven through POST /api/chat. The service keeps no state,
so the history goes with every request; each fault ends in its documented code."""

import asyncio

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import chat, data_frames, parse_sse, read_stream
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)


async def reply_of(client: AsyncClient, message: str = "Say hello", **fields):
    return data_frames(await read_stream(await chat(client, message, **fields)))


async def stored_reply() -> Message:
    return await Message.objects.aget(role="assistant")


def sent_messages(emulator: AgentsEmulator) -> list[dict[str, str]]:
    return emulator.requests[-1].body["messages"]


async def test_it_streams_the_models_reply(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert (data[0]["backend"], data[0]["agent"]) == ("openai", "emulated-model")
    assert data[0]["thread_id"].startswith("oa_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
    }
    reply = await stored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("chatcmpl-")
    [request] = openai_backend.requests
    assert (request.path, request.operation) == (
        "/v1/chat/completions",
        "chat.completions.create",
    )
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.body == {
        "messages": [{"role": "user", "content": "Say hello"}],
        "model": "emulated-model",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_it_sends_the_history_with_each_message(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.OPENAI_SYSTEM_PROMPT = "Be brief."
    first = await reply_of(async_client, "one")
    second = await reply_of(
        async_client, "two", conversation_id=first[0]["conversation_id"]
    )
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    assert sent_messages(openai_backend) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "You said: one"},
        {"role": "user", "content": "two"},
    ]


async def test_it_keeps_the_newest_turns_within_the_budget(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    conversation_id = (await reply_of(async_client, "a" * 40))[0]["conversation_id"]
    for message in ("b" * 40, "c" * 40):
        await reply_of(async_client, message, conversation_id=conversation_id)
    # Room for the new message and the last exchange, but not a turn more.
    settings.OPENAI_HISTORY_CHARS = 4 + 40 + len("You said: " + "c" * 40) + 10
    await reply_of(async_client, "next", conversation_id=conversation_id)
    assert sent_messages(openai_backend) == [
        {"role": "user", "content": "c" * 40},
        {"role": "assistant", "content": "You said: " + "c" * 40},
        {"role": "user", "content": "next"},
    ]
    # A budget that cuts between a question and its answer drops the answer too:
    # the conversation sent starts with the user.
    settings.OPENAI_HISTORY_CHARS = 4 + len("You said: next") + 3
    await reply_of(async_client, "last", conversation_id=conversation_id)
    assert sent_messages(openai_backend) == [{"role": "user", "content": "last"}]


async def test_it_leaves_empty_replies_out_of_the_history(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.push(fault="http_500_json")
    first = await reply_of(async_client, "one")
    assert first[-1]["code"] == "upstream_unavailable"
    await reply_of(async_client, "two", conversation_id=first[0]["conversation_id"])
    assert sent_messages(openai_backend) == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]


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
    async_client: AsyncClient, openai_backend: AgentsEmulator, fault: str, code: str
) -> None:
    openai_backend.push(fault=fault, fault_after=2)
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


async def test_it_says_why_a_reply_is_incomplete(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.push(fault="max_tokens")
    assert "token limit" in (await reply_of(async_client))[-1]["message"]
    openai_backend.push(fault="content_filter")
    assert "content filter" in (await reply_of(async_client))[-1]["message"]


async def test_it_reports_retry_after_on_rate_limits(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.push(fault="http_429_retry_after", retry_after=7)
    data = await reply_of(async_client)
    assert data[-1]["code"] == "rate_limited"
    assert data[-1]["retry_after"] == 7


async def test_it_retries_a_failed_request_when_configured(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_RETRIES = 2
    openai_backend.push(fault="http_500_json")
    data = await reply_of(async_client)
    assert data[-1]["type"] == "done"
    assert [r.status for r in openai_backend.requests] == [500, 200]


async def test_it_answers_unavailable_when_nothing_listens(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    await openai_backend.stop()
    data = await reply_of(async_client)
    assert data[-1]["code"] == "upstream_unavailable"
    assert (await stored_reply()).status == "failed"


async def test_it_closes_a_silent_stream_after_the_timeout(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.CHAT_UPSTREAM_TIMEOUT_SECONDS = 0.3
    settings.CHAT_KEEPALIVE_SECONDS = 0.1
    openai_backend.push(fault="hang", fault_after=1)
    frames = await read_stream(await chat(async_client))
    assert any(frame.get("comment") == "keep-alive" for frame in frames)
    assert data_frames(frames)[-1]["code"] == "timeout"
    reply = await stored_reply()
    assert (reply.status, reply.error_code) == ("failed", "timeout")
    await await_until(lambda: openai_backend.cancelled_runs)
    assert openai_backend.cancelled_runs == [reply.upstream_run_id]


async def test_it_stops_generating_when_stopped(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.configure(tokens=200, token_interval=0.01)
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
    await await_until(lambda: openai_backend.cancelled_runs)
    assert openai_backend.cancelled_runs == [reply.upstream_run_id]
    completion = openai_backend.chat_completions[reply.upstream_run_id]
    assert completion.status == "cancelled"


async def test_it_stops_generating_when_the_client_goes_away(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.configure(tokens=200, token_interval=0.01)
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
    await await_until(lambda: openai_backend.cancelled_runs)
    assert openai_backend.cancelled_runs == [reply.upstream_run_id]


async def test_it_takes_azure_openais_path(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.OPENAI_BASE_URL = f"{openai_backend.base_url}/openai/v1"
    data = await reply_of(async_client)
    assert data[-1]["full_response"] == "You said: Say hello"
    assert openai_backend.requests[0].path == "/openai/v1/chat/completions"


@pytest.mark.parametrize(
    ("key", "credential", "authorization"),
    [
        # The emulator standing in for Azure OpenAI: an Entra token provider.
        ("", "dev", "Bearer dev-token"),
        # A local server without authentication.
        ("", "default", "Bearer none"),
        ("sk-local", "dev", "Bearer sk-local"),
    ],
)
async def test_it_authenticates_with_a_key_a_token_or_nothing(
    async_client: AsyncClient,
    openai_backend: AgentsEmulator,
    settings,
    key: str,
    credential: str,
    authorization: str,
) -> None:
    settings.OPENAI_API_KEY = key
    settings.AZURE_AI_CREDENTIAL = credential
    assert (await reply_of(async_client))[-1]["type"] == "done"
    assert openai_backend.requests[0].headers["Authorization"] == authorization


async def test_it_is_not_ready_without_configuration(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_BACKEND = "openai"
    settings.OPENAI_BASE_URL = ""
    settings.OPENAI_MODEL = ""
    response = await async_client.get("/api/health/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["chat_backend"]


@pytest.mark.parametrize(
    ("url", "key", "credential", "problem"),
    [
        ("", "", "default", "set OPENAI_BASE_URL"),
        ("ftp://127.0.0.1/v1", "", "default", "http(s)"),
        ("http://models.example.com/v1", "sk-x", "default", "https"),
        ("http://x.openai.azure.com/openai/v1", "", "default", "https"),
        ("https://x.openai.azure.com/openai/v1", "", "dev", "loopback"),
    ],
)
def test_it_refuses_unsafe_setups(
    settings, url: str, key: str, credential: str, problem: str
) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = url
    settings.OPENAI_API_KEY = key
    settings.OPENAI_MODEL = "gpt-4o"
    settings.AZURE_AI_CREDENTIAL = credential
    problems = OpenAIBackend().configuration_problems()
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "url",
    ["http://vllm:8000/v1", "http://127.0.0.1:11434/v1", "https://api.openai.com/v1"],
)
def test_it_accepts_plain_http_to_servers_without_a_key(settings, url: str) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = url
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_MODEL = "llama3.2"
    settings.AZURE_AI_CREDENTIAL = "default"
    assert OpenAIBackend().configuration_problems() == []


def test_it_uses_an_entra_token_for_azure_endpoints_without_a_key(settings) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = "https://x.openai.azure.com/openai/v1"
    settings.OPENAI_API_KEY = ""
    assert OpenAIBackend()._uses_entra()
    settings.OPENAI_API_KEY = "azure-key"
    assert not OpenAIBackend()._uses_entra()
