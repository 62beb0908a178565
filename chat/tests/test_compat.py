"""What clients written for the earlier chat service, and generic HTTP clients,
rely on: retried POSTs never run twice, either id continues a conversation, a
stream unless only JSON is asked for, bodies sent as text/plain, per-session limits."""

import uuid
from typing import Any

import orjson
import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import chat, chunks_text, data_frames, parse_sse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)

KEY = {"Idempotency-Key": "retry-me"}


async def browser() -> AsyncClient:
    """An anonymous browser with its own session (it loaded the page)."""
    client = AsyncClient()
    assert (await client.get("/")).status_code == 200
    client.cookies["csrftoken"] = "b" * 32
    client.defaults["HTTP_X_CSRFTOKEN"] = "b" * 32
    return client


async def post(client: AsyncClient, body: dict[str, Any], **headers: str) -> Any:
    return await client.post(
        "/api/chat", body, content_type="application/json", headers=headers
    )


async def held_reply(azure: AgentsEmulator, client: AsyncClient, tokens: int) -> Any:
    """The body of a reply of `tokens` tokens, posted with KEY, that the agent
    holds after the first two."""
    azure.push(tokens=tokens, hold_after=2)
    return (await post(client, {"message": "hi"}, **KEY)).streaming_content


async def frames_until(stream: Any, done: Any) -> list[dict[str, Any]]:
    """Reads frames from a streaming body until `done(frames)` holds."""
    received = b""
    while True:
        received += await anext(stream)
        frames = data_frames(parse_sse(received.rsplit(b"\n\n", 1)[0] + b"\n\n"))
        if done(frames):
            return frames


async def test_a_retried_post_attaches_to_the_reply_in_flight(
    azure: AgentsEmulator,
) -> None:
    client = AsyncClient()
    first = await held_reply(azure, client, tokens=6)
    seen = await frames_until(first, lambda f: chunks_text(f) == "tok0 tok1")

    retry = (await post(client, {"message": "hi"}, **KEY)).streaming_content
    again = await frames_until(retry, lambda f: chunks_text(f) == "tok0 tok1")
    assert again[0] == seen[0]  # the same metadata: the same reply

    azure.release()
    rest = [part async for part in first]
    retried = [part async for part in retry]
    text = "tok0 tok1 tok2 tok3 tok4 tok5"
    assert chunks_text(data_frames(parse_sse(b"".join(rest)))) == text[9:]
    done = data_frames(parse_sse(b"".join(retried)))[-1]
    assert done["type"] == "done" and done["full_response"] == text
    assert [r.operation for r in azure.requests].count("runs.create") == 1
    assert await Message.objects.filter(role="user").acount() == 1
    assert await Message.objects.filter(role="assistant").acount() == 1


async def test_a_retry_with_last_event_id_gets_only_what_followed(
    azure: AgentsEmulator,
) -> None:
    client = AsyncClient()
    first = await held_reply(azure, client, tokens=4)
    received = b""
    while chunks_text(data_frames(parse_sse(received))) != "tok0 tok1":
        received += await anext(first)
    last_id = max(f["id"] for f in parse_sse(received) if f.get("id") is not None)

    retry = await post(
        client, {"message": "hi"}, **KEY, **{"Last-Event-ID": str(last_id)}
    )
    azure.release()
    frames = parse_sse(b"".join([part async for part in retry.streaming_content]))
    assert all(f["id"] > last_id for f in frames if "data" in f)
    assert chunks_text(data_frames(frames)) == " tok2 tok3"
    [part async for part in first]


async def test_a_retry_after_the_reply_finished_gets_it_from_the_database() -> None:
    client = AsyncClient()
    key = {"Idempotency-Key": "finished"}
    first = data_frames(await read_stream(await post(client, {"message": "hi"}, **key)))
    again = data_frames(await read_stream(await post(client, {"message": "hi"}, **key)))

    assert again[0]["message_id"] == first[0]["message_id"]
    assert chunks_text(again) == chunks_text(first)
    assert again[-1]["type"] == "done"
    assert again[-1]["full_response"] == first[-1]["full_response"]
    assert await Message.objects.filter(role="user").acount() == 1
    # The key covers the message and where it goes, not how it is delivered.
    as_json = await post(client, {"message": "hi", "stream": False}, **key)
    assert as_json.status_code == 200
    assert as_json.json()["message_id"] == first[0]["message_id"]
    assert as_json.json()["full_response"] == first[-1]["full_response"]


async def test_the_same_key_with_another_message_is_refused() -> None:
    client = AsyncClient()
    await read_stream(await post(client, {"message": "hi"}, **{"Idempotency-Key": "k"}))
    response = await post(client, {"message": "bye"}, **{"Idempotency-Key": "k"})

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_reused"
    assert await Message.objects.filter(role="user").acount() == 1


async def test_keys_belong_to_their_caller() -> None:
    one, other = await browser(), await browser()
    for client in (one, other):
        await read_stream(
            await post(client, {"message": "hi"}, **{"Idempotency-Key": "k"})
        )
    assert await Conversation.objects.acount() == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "é", "a\tb"])
async def test_a_malformed_key_is_a_400(key: str) -> None:
    response = await post(AsyncClient(), {"message": "hi"}, **{"Idempotency-Key": key})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_a_conversation_id_sent_as_thread_id_continues_the_conversation() -> None:
    client = await browser()
    first = data_frames(await read_stream(await chat(client, "one")))
    conversation_id = first[0]["conversation_id"]

    second = data_frames(
        await read_stream(await chat(client, "two", thread_id=conversation_id))
    )
    assert second[0]["conversation_id"] == conversation_id
    assert second[-1]["type"] == "done"
    assert await Conversation.objects.acount() == 1

    stranger = await browser()
    response = await chat(stranger, "three", thread_id=conversation_id)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("accept", "body", "streams"),
    [
        ("application/json, text/plain, */*", {}, True),  # axios
        ("*/*", {}, True),
        ("", {}, True),
        ("text/event-stream", {}, True),
        ("application/json", {}, False),
        ("application/json;q=0.9", {}, False),
        ("text/event-stream", {"stream": False}, False),
        ("application/json", {"stream": True}, True),
    ],
)
async def test_it_streams_unless_only_json_is_asked_for(
    accept: str, body: dict[str, Any], streams: bool
) -> None:
    response = await post(AsyncClient(), {"message": "hi", **body}, Accept=accept)

    assert response.status_code == 200
    if streams:
        assert response["Content-Type"].startswith("text/event-stream")
        assert data_frames(await read_stream(response))[-1]["type"] == "done"
    else:
        assert response["Content-Type"] == "application/json"
        assert response.json()["status"] == "complete"


async def test_a_json_body_sent_as_text_plain_is_read() -> None:
    response = await AsyncClient().post(
        "/api/chat",
        orjson.dumps({"message": "hi"}),
        content_type="text/plain;charset=UTF-8",
    )

    assert response.status_code == 200
    assert data_frames(await read_stream(response))[-1]["type"] == "done"


async def test_stream_must_be_a_boolean() -> None:
    response = await post(AsyncClient(), {"message": "hi", "stream": "no"})

    assert response.status_code == 400
    assert response.json()["fields"] == {"stream": ["stream must be true or false"]}


async def test_the_wire_is_ascii_and_errors_carry_the_old_error_field(
    azure: AgentsEmulator,
) -> None:
    text = "héllo 👍🏽\u2028 next\u2029 line\u0085 中文"
    azure.push(reply=text)
    response = await post(AsyncClient(), {"message": "hi"})
    raw = b"".join([part async for part in response.streaming_content])
    assert raw.isascii()
    assert chunks_text(data_frames(parse_sse(raw))) == text
    # Readers that split lines on every Unicode line break see the same lines.
    assert len(raw.decode().splitlines()) == raw.count(b"\n")

    azure.push(fault="http_500_json")
    error = data_frames(await read_stream(await post(AsyncClient(), {"message": "x"})))[
        -1
    ]
    assert error["type"] == "error"
    assert error["error"] == error["message"] and error["code"]


async def test_anonymous_sessions_are_limited_each_and_cookieless_callers_per_address(
    azure: AgentsEmulator, settings
) -> None:
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    settings.CHAT_MAX_CONCURRENT_STREAMS_PER_IP = 3
    azure.configure(hold_after=1)
    open_streams = []
    for _ in range(3):  # three people behind one address
        response = await chat(await browser(), "hi")
        assert response.status_code == 200
        open_streams.append(response.streaming_content)
        await anext(open_streams[-1])
    # The address's ceiling holds even for a fresh cookie.
    assert (await chat(await browser(), "hi")).status_code == 429
    # A cookie-less caller from that address has its own per-address limit.
    settings.CHAT_MAX_CONCURRENT_STREAMS_PER_IP = 0
    cookieless = await chat(AsyncClient(), "hi")
    assert cookieless.status_code == 200
    open_streams.append(cookieless.streaming_content)
    await anext(open_streams[-1])
    assert (await chat(AsyncClient(), "hi")).status_code == 429

    azure.configure(hold_after=None)
    azure.release()
    for stream in open_streams:
        [part async for part in stream]


async def test_a_key_whose_request_failed_can_be_used_again() -> None:
    client = AsyncClient()
    key = {"Idempotency-Key": "k-failed"}
    missing = {"message": "hi", "conversation_id": str(uuid.uuid4())}
    assert (await post(client, missing, **key)).status_code == 404

    response = await post(client, {"message": "hi"}, **key)
    assert response.status_code == 200
    assert data_frames(await read_stream(response))[-1]["type"] == "done"
