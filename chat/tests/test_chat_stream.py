"""POST /api/chat with the offline backend, through Django's async test client."""

import asyncio
import uuid

import pytest
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from chat import ticks
from chat.backends.local import demo_reply
from chat.models import Conversation, Message
from testing.sse import chat, data_frames, parse_sse, read_stream, read_then_leave

pytestmark = pytest.mark.django_db(transaction=True)

# The offline agent's replies are 60-odd tokens: at this pace one takes 12 s, long
# enough to be stopped or left after its first chunks.
SLOW_DELAY_MS = 200
# An agent that says nothing for a minute.
SILENT_DELAY_MS = 60_000


@pytest.fixture
def slow_agent(settings: Settings) -> Settings:
    """The offline agent at SLOW_DELAY_MS a token; the settings, for more changes."""
    settings.CHAT_LOCAL_DELAY_MS = SLOW_DELAY_MS
    return settings


async def test_it_streams_the_old_wire_format(async_client: AsyncClient) -> None:
    response = await chat(async_client, thread_id=None)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Cache-Control"] == "no-cache, no-transform"
    assert response["X-Accel-Buffering"] == "no"
    assert not response.has_header("Content-Encoding")
    frames = await read_stream(response)
    data = data_frames(frames)
    assert data[0]["type"] == "metadata"
    assert data[0]["thread_id"].startswith("local_")
    assert data[0]["agent"] == "Offline demo agent"
    chunks = [d["content"] for d in data if d["type"] == "chunk"]
    assert len(chunks) > 10
    done = data[-1]
    assert done["type"] == "done"
    assert done["status"] == "complete"
    assert done["full_response"] == "".join(chunks) == demo_reply("Say hello")
    assert done["message_id"] == data[0]["message_id"]
    assert done["usage"]["completion_tokens"] > 0
    assert "T" in done["timestamp"]


async def test_a_finished_reply_and_its_reader_leave_no_deadline_behind(
    async_client: AsyncClient,
) -> None:
    await read_stream(await chat(async_client))
    loop = asyncio.get_running_loop()
    # The reply's watchdog and the reader's keep-alive (one ticker, both 1 s).
    tickers = [t for t in ticks._tickers.values() if t.loop is loop]
    assert tickers
    assert [len(t) for t in tickers] == [0] * len(tickers)


async def test_it_numbers_every_frame_monotonically(async_client: AsyncClient) -> None:
    frames = await read_stream(await chat(async_client))
    ids = [frame["id"] for frame in frames]
    # Strictly increasing from 0; chunks that queued up come as one frame, with
    # the id of the last.
    assert ids[0] == 0
    assert ids == sorted(set(ids))


async def test_it_stores_both_messages(async_client: AsyncClient) -> None:
    data = data_frames(await read_stream(await chat(async_client, "Hi there")))
    conversation = await Conversation.objects.aget(pk=data[0]["conversation_id"])
    assert conversation.title == "Hi there"
    assert conversation.active_since is None
    assert conversation.upstream_thread_id == data[0]["thread_id"]
    messages = [m async for m in conversation.messages.all()]
    assert [(m.role, m.status) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert messages[0].content == "Hi there"
    assert messages[1].content == data[-1]["full_response"]
    assert str(messages[1].id) == data[0]["message_id"]
    assert messages[1].time_to_first_chunk_ms is not None
    assert messages[1].usage == data[-1]["usage"]


async def test_it_continues_a_conversation_by_thread_id(
    async_client: AsyncClient,
) -> None:
    first = data_frames(await read_stream(await chat(async_client, "one")))
    second = data_frames(
        await read_stream(
            await chat(async_client, "two", thread_id=first[0]["thread_id"])
        )
    )
    assert second[0]["conversation_id"] == first[0]["conversation_id"]
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert await Message.objects.acount() == 4


async def test_it_continues_a_conversation_by_id(async_client: AsyncClient) -> None:
    first = data_frames(await read_stream(await chat(async_client, "one")))
    cid = first[0]["conversation_id"]
    second = data_frames(
        await read_stream(await chat(async_client, "two", conversation_id=cid))
    )
    assert second[0]["conversation_id"] == cid
    assert "two" in second[-1]["full_response"]


async def test_it_keeps_unicode_and_newlines_intact(async_client: AsyncClient) -> None:
    message = 'Zeile 1\nligne 2 — 日本語 🎉\r\n"quotes" \\ and\ttabs\u2028end'
    frames = await read_stream(await chat(async_client, message))
    data = data_frames(frames)
    assert "".join(d["content"] for d in data if d["type"] == "chunk") == demo_reply(
        message
    )
    assert data[-1]["full_response"] == demo_reply(message)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "   "}, "message"),
        ({"message": 42}, "message"),
        ({"message": "nul\x00byte"}, "message"),
        ({}, "message"),
        ({"message": "hi", "thread_id": "bad id!"}, "thread_id"),
        ({"message": "hi", "thread_id": 7}, "thread_id"),
        ({"message": "hi", "conversation_id": "not-a-uuid"}, "conversation_id"),
    ],
)
async def test_it_rejects_invalid_requests_before_streaming(
    async_client: AsyncClient, body: dict, field: str
) -> None:
    response = await async_client.post(
        "/api/chat", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "invalid_request"
    assert field in response.json()["fields"]
    assert await Conversation.objects.acount() == 0


async def test_it_rejects_over_long_messages(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    response = await chat(async_client, "x" * 11)
    assert response.status_code == 400
    assert "longer than 10" in response.json()["error"]


async def test_it_rejects_malformed_json_and_other_types(
    async_client: AsyncClient,
) -> None:
    response = await async_client.post(
        "/api/chat", "{nope", content_type="application/json"
    )
    assert response.status_code == 400
    response = await async_client.post("/api/chat", {"message": "hi"})
    assert response.status_code == 415
    response = await async_client.get("/api/chat")
    assert response.status_code == 405
    assert "POST" in response["Allow"]


async def test_it_answers_404_for_unknown_ids(async_client: AsyncClient) -> None:
    response = await chat(async_client, conversation_id=str(uuid.uuid4()))
    assert response.status_code == 404
    response = await chat(async_client, thread_id="thread_unknown")
    assert response.status_code == 404
    assert await Message.objects.acount() == 0


async def test_it_refuses_a_second_message_while_one_streams(
    async_client: AsyncClient, slow_agent: Settings
) -> None:
    response = await chat(async_client)
    stream = aiter(response.streaming_content)
    conversation_id = parse_sse(await anext(stream))[0]["data"]["conversation_id"]
    busy = await chat(async_client, conversation_id=conversation_id)
    assert busy.status_code == 409
    assert busy.json()["code"] == "conversation_busy"
    await async_client.post(f"/api/chat/{conversation_id}/stop")
    async for _ in stream:
        pass
    slow_agent.CHAT_LOCAL_DELAY_MS = 1
    again = await chat(async_client, conversation_id=conversation_id)
    assert again.status_code == 200
    await read_stream(again)


@pytest.mark.usefixtures("slow_agent")
async def test_it_stops_a_reply_and_keeps_the_partial_text(
    async_client: AsyncClient,
) -> None:
    response = await chat(async_client)
    stream = aiter(response.streaming_content)
    raw = await anext(stream) + await anext(stream) + await anext(stream)
    conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
    stopped = await async_client.post(f"/api/chat/{conversation_id}/stop")
    assert stopped.status_code == 200
    rest = b"".join([part async for part in stream])
    data = data_frames(parse_sse(raw + rest))
    done = data[-1]
    assert done["type"] == "done"
    assert done["status"] == "cancelled"
    assert 0 < len(done["full_response"]) < len(demo_reply("Say hello"))
    reply = await Message.objects.aget(role="assistant")
    assert reply.status == "cancelled"
    assert reply.content == done["full_response"]
    nothing = await async_client.post(f"/api/chat/{conversation_id}/stop")
    assert nothing.status_code == 409


@pytest.mark.usefixtures("slow_agent")
async def test_it_stores_an_interrupted_reply_when_the_client_goes_away(
    async_client: AsyncClient,
) -> None:
    response = await chat(async_client)
    received = await read_then_leave(response, lambda body: body.count(b"\n\n") >= 3)
    reply = await Message.objects.aget(role="assistant")
    assert reply.status == "interrupted"
    sent = "".join(d["content"] for d in data_frames(parse_sse(received))[1:])
    assert reply.content.startswith(sent)
    assert len(reply.content) < len(demo_reply("Say hello"))
    conversation = await Conversation.objects.aget()
    assert conversation.active_since is None


async def test_it_sends_keepalives_while_the_upstream_is_silent(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_LOCAL_DELAY_MS = SILENT_DELAY_MS
    settings.CHAT_KEEPALIVE_SECONDS = 0.05
    response = await chat(async_client, "hi")
    raw = await read_then_leave(response, lambda body: body.count(b"keep-alive") >= 2)
    assert raw.count(b": keep-alive\n") >= 2
    # A blank line would dispatch an empty event in some clients.
    assert b": keep-alive\n\n" not in raw
    reply = await Message.objects.aget(role="assistant")
    assert (reply.status, reply.content) == ("interrupted", "")


async def test_it_times_out_a_silent_upstream(
    async_client: AsyncClient, settings
) -> None:
    settings.CHAT_LOCAL_DELAY_MS = SILENT_DELAY_MS
    settings.CHAT_UPSTREAM_TIMEOUT_SECONDS = 0.2
    data = data_frames(await read_stream(await chat(async_client)))
    assert data[0]["type"] == "metadata"
    assert data[-1]["type"] == "error"
    assert data[-1]["code"] == "timeout"
    reply = await Message.objects.aget(role="assistant")
    assert (reply.status, reply.error_code) == ("failed", "timeout")


async def test_it_answers_json_when_the_client_prefers_it(
    async_client: AsyncClient,
) -> None:
    response = await async_client.post(
        "/api/chat",
        {"message": "hello"},
        content_type="application/json",
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "complete"
    assert body["full_response"] == demo_reply("hello")
    assert body["error"] is None
    assert uuid.UUID(body["conversation_id"])


async def test_it_requires_login_when_configured(
    async_client: AsyncClient, settings, django_user_model
) -> None:
    settings.CHAT_REQUIRE_LOGIN = True
    response = await chat(async_client)
    assert response.status_code == 401
    user = await django_user_model.objects.acreate_user("ada", password="x")
    await async_client.aforce_login(user)
    response = await chat(async_client)
    assert response.status_code == 200
    data = data_frames(await read_stream(response))
    conversation = await Conversation.objects.aget(pk=data[0]["conversation_id"])
    assert conversation.owner_id == user.pk


async def test_it_enforces_csrf_for_session_callers(django_user_model) -> None:
    client = AsyncClient(enforce_csrf_checks=True)
    user = await django_user_model.objects.acreate_user("bob", password="x")
    await client.aforce_login(user)
    response = await chat(client)
    assert response.status_code == 403
    assert response.json()["code"] == "csrf"
    token = "a" * 32
    client.cookies["csrftoken"] = token
    response = await client.post(
        "/api/chat",
        {"message": "hi"},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200
    await read_stream(response)


async def test_it_serves_concurrent_conversations(async_client: AsyncClient) -> None:
    async def one(i: int) -> str:
        return data_frames(await read_stream(await chat(async_client, f"n{i}")))[-1][
            "full_response"
        ]

    replies = await asyncio.gather(*(one(i) for i in range(5)))
    assert replies == [demo_reply(f"n{i}") for i in range(5)]
    assert await Message.objects.filter(status="complete").acount() == 10
