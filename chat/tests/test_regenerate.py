"""Regenerating the last reply (POST /api/conversations/<id>/regenerate) and
editing the last message (POST /api/chat with `edit`): another attempt is stored
beside the earlier ones, an edit supersedes the message it replaces, and every
backend's agent then sees exactly the conversation as it is shown, through the
emulator and the real SDKs."""

import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import AsyncClient
from django.utils import timezone

from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import chat, data_frames, read_stream, reply_of
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)


async def conversation(client: AsyncClient, conversation_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/conversations/{conversation_id}")
    assert response.status_code == 200
    return response.json()


async def regenerate(client: AsyncClient, conversation_id: str, **body: Any) -> Any:
    return await client.post(
        f"/api/conversations/{conversation_id}/regenerate",
        body or None,
        content_type="application/json",
    )


async def regenerated(client: AsyncClient, conversation_id: str) -> list[dict]:
    response = await regenerate(client, conversation_id)
    assert response.status_code == 200
    return data_frames(await read_stream(response))


def shown(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The conversation as the page shows it: the latest attempt of each reply."""
    return [
        (m["role"], m["content"])
        for m in body["messages"]
        if m["role"] == "user" or m["attempt"] == m["attempts"]
    ]


async def two_turns(client: AsyncClient) -> tuple[str, list[dict[str, Any]]]:
    first = await reply_of(client, "one")
    conversation_id = first[0]["conversation_id"]
    second = await reply_of(client, "two", conversation_id=conversation_id)
    return conversation_id, second


async def test_regenerate_stores_another_attempt_at_the_last_reply(
    async_client: AsyncClient,
) -> None:
    conversation_id, second = await two_turns(async_client)
    question = (await conversation(async_client, conversation_id))["messages"][2]
    assert second[0]["reply_to"] == question["id"]

    again = await regenerated(async_client, conversation_id)
    assert again[0]["reply_to"] == question["id"]
    assert again[-1]["type"] == "done"
    assert again[-1]["message_id"] != second[-1]["message_id"]

    body = await conversation(async_client, conversation_id)
    replies = [m for m in body["messages"] if m["reply_to"] == question["id"]]
    assert [m["id"] for m in replies] == [
        second[-1]["message_id"],
        again[-1]["message_id"],
    ]
    assert [(m["attempt"], m["attempts"]) for m in replies] == [(1, 2), (2, 2)]
    assert [m["role"] for m in body["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "assistant",
    ]
    # No second copy of the question.
    assert await Message.objects.filter(role="user").acount() == 2


async def test_edit_replaces_the_last_message_and_keeps_it_superseded(
    async_client: AsyncClient,
) -> None:
    conversation_id, _ = await two_turns(async_client)
    before = await conversation(async_client, conversation_id)
    last = before["messages"][2]
    data = await reply_of(
        async_client, "two, edited", conversation_id=conversation_id, edit=last["id"]
    )
    assert data[-1]["type"] == "done"
    body = await conversation(async_client, conversation_id)
    assert [(m["role"], m["content"][:11]) for m in body["messages"]] == [
        ("user", "one"),
        ("assistant", "Hello! I am"),
        ("user", "two, edited"),
        ("assistant", "Hello! I am"),
    ]
    assert body["messages"][3]["reply_to"] == body["messages"][2]["id"]
    assert data[0]["reply_to"] == body["messages"][2]["id"]
    superseded = Message.objects.filter(superseded=True).order_by("created_at")
    assert [m.content[:11] async for m in superseded] == ["two", "Hello! I am"]


async def test_an_edit_must_name_the_last_message(async_client: AsyncClient) -> None:
    conversation_id, _ = await two_turns(async_client)
    first = (await conversation(async_client, conversation_id))["messages"][0]
    for edited in (first["id"], str(uuid.uuid4())):
        response = await chat(
            async_client, "again", conversation_id=conversation_id, edit=edited
        )
        assert response.status_code == 409
        assert response.json()["code"] == "not_last_message"
    assert await Message.objects.acount() == 4
    assert not await Conversation.objects.filter(active_since__isnull=False).aexists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"edit": str(uuid.uuid4())}, "message"),
        ({"message": "hi", "edit": "not-an-id"}, "edit"),
        ({"message": "", "edit": str(uuid.uuid4())}, "message"),
    ],
)
async def test_it_refuses_an_edit_without_text_or_a_message_id(
    async_client: AsyncClient, fields: dict[str, Any], field: str
) -> None:
    conversation_id, _ = await two_turns(async_client)
    response = await async_client.post(
        "/api/chat",
        {"conversation_id": conversation_id, **fields},
        content_type="application/json",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert list(body["fields"]) == [field]
    assert body["error"] == body["fields"][field][0]


async def test_an_edit_finds_its_conversation_by_the_message(
    async_client: AsyncClient,
) -> None:
    conversation_id, _ = await two_turns(async_client)
    last = (await conversation(async_client, conversation_id))["messages"][2]
    data = await reply_of(async_client, "two again", edit=last["id"])
    assert data[0]["conversation_id"] == conversation_id
    body = await conversation(async_client, conversation_id)
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == [
        "one",
        "two again",
    ]


async def test_regenerate_refuses_a_bad_body(async_client: AsyncClient) -> None:
    conversation_id, _ = await two_turns(async_client)
    for body in ({"stream": "no"}, {"message": "hi"}):
        response = await regenerate(async_client, conversation_id, **body)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_request"
    response = await async_client.post(
        f"/api/conversations/{conversation_id}/regenerate",
        "[]",
        content_type="application/json",
    )
    assert response.status_code == 400
    response = await async_client.post(
        f"/api/conversations/{conversation_id}/regenerate",
        "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1),
        content_type="application/json",
    )
    assert response.status_code == 413
    assert await Message.objects.acount() == 4


async def test_regenerate_needs_a_conversation_of_the_callers(
    async_client: AsyncClient,
) -> None:
    await two_turns(async_client)
    response = await regenerate(async_client, str(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert await Message.objects.acount() == 4


async def test_regenerate_answers_only_the_owner(django_user_model) -> None:
    alice, bob = AsyncClient(), AsyncClient()
    await alice.aforce_login(await django_user_model.objects.acreate_user("alice"))
    await bob.aforce_login(await django_user_model.objects.acreate_user("bob"))
    conversation_id, _ = await two_turns(alice)
    response = await regenerate(bob, conversation_id)
    assert response.status_code == 404
    last = (await conversation(alice, conversation_id))["messages"][2]
    response = await chat(bob, "mine?", edit=last["id"])
    assert response.status_code == 409
    assert await Message.objects.acount() == 4


async def test_regenerate_waits_for_the_reply_in_flight(
    async_client: AsyncClient,
) -> None:
    conversation_id, _ = await two_turns(async_client)
    await Conversation.objects.filter(pk=conversation_id).aupdate(
        active_since=timezone.now()
    )
    last = (await conversation(async_client, conversation_id))["messages"][2]
    for response in (
        await regenerate(async_client, conversation_id),
        await chat(async_client, "x", conversation_id=conversation_id, edit=last["id"]),
    ):
        assert response.status_code == 409
        assert response.json()["code"] == "conversation_busy"
    assert await Message.objects.acount() == 4


async def test_a_repeated_regenerate_gets_the_same_reply(
    async_client: AsyncClient,
) -> None:
    conversation_id, _ = await two_turns(async_client)
    replies = []
    for _ in range(2):
        response = await async_client.post(
            f"/api/conversations/{conversation_id}/regenerate",
            {"stream": False},
            content_type="application/json",
            headers={"Idempotency-Key": "regenerate-1"},
        )
        assert response.status_code == 200
        replies.append(response.json()["message_id"])
    assert replies[0] == replies[1]
    assert await Message.objects.filter(role="assistant").acount() == 3


# --- what each backend's agent sees --------------------------------------------------


async def test_openai_sees_the_conversation_as_shown(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    conversation_id, _ = await two_turns(async_client)
    await regenerated(async_client, conversation_id)
    assert openai_backend.requests[-1].body["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "You said: one"},
        {"role": "user", "content": "two"},
    ]
    body = await conversation(async_client, conversation_id)
    await reply_of(
        async_client,
        "two!",
        conversation_id=conversation_id,
        edit=body["messages"][2]["id"],
    )
    await reply_of(async_client, "three", conversation_id=conversation_id)
    expected = [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two!"),
        ("assistant", "You said: two!"),
        ("user", "three"),
    ]
    sent = openai_backend.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == expected
    body = await conversation(async_client, conversation_id)
    assert shown(body) == [*expected, ("assistant", "You said: three")]


async def test_azure_agents_answers_in_a_thread_of_the_shown_conversation(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    conversation_id, second = await two_turns(async_client)
    old_thread = second[0]["thread_id"]
    again = await regenerated(async_client, conversation_id)
    new_thread = again[0]["thread_id"]
    assert new_thread != old_thread
    assert "thread_reset" not in again[0]
    assert [(m.role, m.text) for m in azure.threads[new_thread].messages] == [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two"),
        ("assistant", "You said: two"),
    ]
    await await_until(lambda: old_thread not in azure.threads)

    body = await conversation(async_client, conversation_id)
    assert body["thread_id"] == new_thread
    edited = await reply_of(
        async_client,
        "two, edited",
        conversation_id=conversation_id,
        edit=body["messages"][2]["id"],
    )
    thread = azure.threads[edited[0]["thread_id"]]
    await await_until(lambda: new_thread not in azure.threads)
    assert [(m.role, m.text) for m in thread.messages] == [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two, edited"),
        ("assistant", "You said: two, edited"),
    ]
    # The next message continues that thread.
    after = await reply_of(async_client, "three", conversation_id=conversation_id)
    assert after[0]["thread_id"] == edited[0]["thread_id"]
    assert [m.text for m in thread.messages][-2:] == ["three", "You said: three"]
    body = await conversation(async_client, conversation_id)
    assert shown(body) == [(m.role, m.text) for m in thread.messages]


async def test_foundry_answers_in_a_conversation_seeded_with_the_shown_one(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    # Twelve turns: more items than the service takes in one call.
    first = await reply_of(async_client, "turn 0")
    conversation_id = first[0]["conversation_id"]
    for turn in range(1, 12):
        data = await reply_of(
            async_client, f"turn {turn}", conversation_id=conversation_id
        )
    old = data[0]["thread_id"]
    again = await regenerated(async_client, conversation_id)
    new = again[0]["thread_id"]
    assert new != old
    expected = []
    for turn in range(12):
        expected += [("user", f"turn {turn}"), ("assistant", f"You said: turn {turn}")]
    assert [(m.role, m.text) for m in foundry.conversations[new].messages] == expected
    assert "conversations.items.create" in [r.operation for r in foundry.requests]
    await await_until(lambda: old not in foundry.conversations)
    body = await conversation(async_client, conversation_id)
    assert shown(body) == expected
    assert body["thread_id"] == new


async def test_local_regenerates_with_nothing_upstream(
    async_client: AsyncClient,
) -> None:
    conversation_id, second = await two_turns(async_client)
    again = await regenerated(async_client, conversation_id)
    assert again[0]["thread_id"] == second[0]["thread_id"]
    assert again[-1]["full_response"] == second[-1]["full_response"]
