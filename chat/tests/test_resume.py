"""Replies outlive their connection: a client that leaves does not stop the
reply (CHAT_ON_DISCONNECT=continue, the default outside tests), and
GET /api/conversations/<id>/stream picks it up again, exactly where it left off."""

from typing import Any

import pytest
from django.test import AsyncClient

from chat.models import Message
from emulator import AgentsEmulator
from testing.replies import astored_reply
from testing.sse import chat, chunks_text, data_frames, parse_sse, read_then_leave

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "tok0 tok1 tok2 tok3 tok4 tok5"


@pytest.fixture(autouse=True)
def detach(settings: Any) -> None:
    settings.CHAT_ON_DISCONNECT = "continue"


def last_id(raw: bytes) -> int:
    return max(f["id"] for f in parse_sse(raw) if "data" in f)


async def resume(client: AsyncClient, conversation_id: str, **headers: str) -> bytes:
    response = await client.get(
        f"/api/conversations/{conversation_id}/stream", headers=headers
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    return b"".join([part async for part in response.streaming_content])


async def leave_after_two_chunks(
    azure: AgentsEmulator, client: AsyncClient
) -> tuple[str, bytes]:
    """Leaves a reply of six tokens, which the agent holds after two, once they
    arrived: its conversation id and what the client read."""
    azure.push(tokens=6, hold_after=2)
    response = await chat(client, "hi")
    raw = await read_then_leave(response, lambda body: b"tok1" in body)
    return data_frames(parse_sse(raw))[0]["conversation_id"], raw


async def test_a_reply_goes_on_when_its_client_leaves_and_resumes_after_the_last_id(
    azure: AgentsEmulator,
) -> None:
    client = AsyncClient()
    conversation_id, raw = await leave_after_two_chunks(azure, client)
    seen = last_id(raw)

    azure.release()
    resumed = await resume(client, conversation_id, **{"Last-Event-ID": str(seen)})
    assert resumed.startswith(b"retry: ")
    frames = parse_sse(resumed)
    assert all(f["id"] > seen for f in frames if "data" in f)
    data = data_frames(frames)
    assert chunks_text(data_frames(parse_sse(raw))) + chunks_text(data) == TEXT
    assert data[-1]["type"] == "done" and data[-1]["full_response"] == TEXT
    assert azure.cancelled_runs == []
    reply = await astored_reply()
    assert (reply.status, reply.content) == (Message.Status.COMPLETE, TEXT)


async def test_a_finished_reply_replays_exactly_from_any_id(
    azure: AgentsEmulator,
) -> None:
    azure.push(tokens=6)
    client = AsyncClient()
    whole = await chat(client, "hi")
    raw = b"".join([part async for part in whole.streaming_content])
    frames = [f for f in parse_sse(raw) if "data" in f]
    conversation_id = frames[0]["data"]["conversation_id"]

    for cut in range(-1, len(frames)):
        after = frames[cut]["id"] if cut >= 0 else -1
        query = await client.get(
            f"/api/conversations/{conversation_id}/stream",
            {"last_event_id": after} if after >= 0 else {},
        )
        body = b"".join([part async for part in query.streaming_content])
        resumed = [f for f in parse_sse(body) if "data" in f]
        # The same text and frames after `after`; queued chunks come as one.
        assert all(f["id"] > after for f in resumed) or cut == len(frames) - 1
        # One that has everything gets the final frame again.
        expected = [f["data"] for f in frames[cut + 1 :] or frames[-1:]]
        got = [f["data"] for f in resumed]
        assert chunks_text(got) == chunks_text(expected)
        assert [f for f in got if f["type"] != "chunk"] == [
            f for f in expected if f["type"] != "chunk"
        ]


async def test_once_the_frames_expire_the_stored_reply_is_replayed(
    azure: AgentsEmulator, settings: Any
) -> None:
    settings.CHAT_REPLAY_TTL_SECONDS = 0
    azure.push(tokens=6)
    client = AsyncClient()
    response = await chat(client, "hi")
    first = data_frames(
        parse_sse(b"".join([p async for p in response.streaming_content]))
    )

    replay = data_frames(parse_sse(await resume(client, first[0]["conversation_id"])))
    assert [f["type"] for f in replay] == ["metadata", "chunk", "done"]
    assert replay[0]["message_id"] == first[0]["message_id"]
    assert replay[1]["content"] == TEXT
    assert replay[2]["full_response"] == TEXT


async def test_a_resume_follows_the_ownership_rules(azure: AgentsEmulator) -> None:
    azure.push(tokens=2)
    owner = AsyncClient()
    page = await owner.get("/")
    assert page.status_code == 200
    owner.cookies["csrftoken"] = "b" * 32
    owner.defaults["HTTP_X_CSRFTOKEN"] = "b" * 32
    response = await chat(owner, "hi")
    conversation_id = data_frames(
        parse_sse(b"".join([p async for p in response.streaming_content]))
    )[0]["conversation_id"]

    stranger = await AsyncClient().get(f"/api/conversations/{conversation_id}/stream")
    assert stranger.status_code == 404
    assert stranger.json()["code"] == "not_found"
    assert (await resume(owner, conversation_id)).count(b'"type":"done"') == 1


async def test_stopping_a_detached_reply_ends_it_as_cancelled(
    azure: AgentsEmulator,
) -> None:
    client = AsyncClient()
    conversation_id, _raw = await leave_after_two_chunks(azure, client)

    stop = await client.post(f"/api/chat/{conversation_id}/stop")
    assert stop.status_code == 200
    data = data_frames(parse_sse(await resume(client, conversation_id)))
    assert data[-1]["type"] == "done" and data[-1]["status"] == "cancelled"
    assert (await astored_reply()).status == Message.Status.CANCELLED


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5", "1" * 10])
async def test_a_malformed_last_event_id_parameter_is_a_400(
    azure: AgentsEmulator, value: str
) -> None:
    azure.push(tokens=2)
    client = AsyncClient()
    response = await chat(client, "hi")
    body = b"".join([part async for part in response.streaming_content])
    conversation_id = data_frames(parse_sse(body))[0]["conversation_id"]

    refused = await client.get(
        f"/api/conversations/{conversation_id}/stream", {"last_event_id": value}
    )
    assert refused.status_code == 400
    assert refused.json()["fields"] == {
        "last_event_id": ["must be a frame id (digits)"]
    }
