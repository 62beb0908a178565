"""GET/DELETE /api/conversations and ownership: a caller sees only their own."""

import uuid

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from testing.sse import chat, data_frames, read_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def new_conversation(client: AsyncClient, message: str = "hello") -> str:
    data = data_frames(await read_stream(await chat(client, message)))
    return data[0]["conversation_id"]


async def browser() -> AsyncClient:
    """An anonymous browser: it loads the page first, which gives it a session."""
    client = AsyncClient()
    assert (await client.get("/")).status_code == 200
    assert "sessionid" in client.cookies
    client.cookies["csrftoken"] = "b" * 32
    client.defaults["HTTP_X_CSRFTOKEN"] = "b" * 32
    return client


async def test_it_lists_the_callers_conversations_newest_first() -> None:
    client = await browser()
    first = await new_conversation(client, "first")
    second = await new_conversation(client, "second")
    response = await client.get("/api/conversations")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [c["id"] for c in results] == [second, first]
    assert results[0]["title"] == "second"
    assert results[0]["streaming"] is False


async def test_it_returns_a_conversation_with_its_messages() -> None:
    client = await browser()
    conversation_id = await new_conversation(client, "hi")
    response = await client.get(f"/api/conversations/{conversation_id}")
    body = response.json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    assert body["messages"][0]["content"] == "hi"
    assert body["messages"][1]["status"] == "complete"


async def test_it_hides_other_browsers_conversations() -> None:
    alice, bob = await browser(), await browser()
    conversation_id = await new_conversation(alice)
    assert (await bob.get("/api/conversations")).json()["results"] == []
    for response in (
        await bob.get(f"/api/conversations/{conversation_id}"),
        await bob.delete(f"/api/conversations/{conversation_id}"),
        await bob.post(f"/api/chat/{conversation_id}/stop"),
        await chat(bob, "mine now?", conversation_id=conversation_id),
    ):
        assert response.status_code == 404
    assert await Message.objects.acount() == 2


async def test_it_hides_other_users_conversations(django_user_model) -> None:
    alice, bob = AsyncClient(), AsyncClient()
    await alice.aforce_login(await django_user_model.objects.acreate_user("alice"))
    await bob.aforce_login(await django_user_model.objects.acreate_user("bob"))
    conversation_id = await new_conversation(alice)
    assert (await bob.get("/api/conversations")).json()["results"] == []
    assert (await bob.get(f"/api/conversations/{conversation_id}")).status_code == 404
    assert (await alice.get(f"/api/conversations/{conversation_id}")).status_code == 200


async def test_cookieless_callers_own_conversations_by_id() -> None:
    script = AsyncClient()
    conversation_id = await new_conversation(script)
    assert "sessionid" not in script.cookies
    # No list for callers without a session: holding the id is the ownership.
    assert (await AsyncClient().get("/api/conversations")).json()["results"] == []
    response = await AsyncClient().get(f"/api/conversations/{conversation_id}")
    assert response.status_code == 200
    # A browser session does not reach conversations created without one.
    other = await browser()
    assert (await other.get(f"/api/conversations/{conversation_id}")).status_code == 404


async def test_it_deletes_a_conversation() -> None:
    client = await browser()
    conversation_id = await new_conversation(client)
    response = await client.delete(f"/api/conversations/{conversation_id}")
    assert response.status_code == 204
    assert await Conversation.objects.acount() == 0
    assert await Message.objects.acount() == 0
    missing = await client.get(f"/api/conversations/{conversation_id}")
    assert missing.status_code == 404


async def test_it_requires_csrf_for_session_deletes() -> None:
    client = await browser()
    conversation_id = await new_conversation(client)
    strict = AsyncClient(enforce_csrf_checks=True)
    strict.cookies = client.cookies
    response = await strict.delete(f"/api/conversations/{conversation_id}")
    assert response.status_code == 403
    assert await Conversation.objects.acount() == 1


async def test_it_answers_404_for_unknown_and_malformed_ids() -> None:
    client = await browser()
    assert (await client.get(f"/api/conversations/{uuid.uuid4()}")).status_code == 404
    response = await client.get("/api/conversations/not-a-uuid")
    assert response.status_code == 404
    assert response.json() == {"error": "not found", "code": "not_found"}
