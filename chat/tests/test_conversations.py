"""GET/PATCH/DELETE /api/conversations: listing a page at a time, searching,
renaming, deleting, and ownership: a caller sees only their own."""

import uuid
from typing import Any

import pytest
from django.test import AsyncClient
from django.utils import timezone

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


# --- rename ---------------------------------------------------------------------------


async def rename(client: AsyncClient, conversation_id: str, body: object) -> Any:
    return await client.patch(
        f"/api/conversations/{conversation_id}", body, content_type="application/json"
    )


async def test_it_renames_a_conversation_in_place() -> None:
    client = await browser()
    first = await new_conversation(client, "first")
    await new_conversation(client, "second")
    response = await rename(client, first, {"title": "  Trip to Lisbon  "})
    assert response.status_code == 200
    assert response.json()["title"] == "Trip to Lisbon"
    assert response.json()["id"] == first
    listed = (await client.get("/api/conversations")).json()["results"]
    # Renaming does not move it up the list.
    assert [c["title"] for c in listed] == ["second", "Trip to Lisbon"]
    assert (await rename(client, first, {"title": "x" * 200})).status_code == 200


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"title": ""}, "must not be blank"),
        ({"title": "   "}, "must not be blank"),
        ({"title": "x" * 201}, "is longer than 200 characters"),
        ({"title": "a\x00b"}, "must not contain NUL characters"),
        ({"title": 7}, "must be a string"),
        ({}, "this field is required"),
    ],
)
async def test_it_refuses_a_bad_title(body: dict[str, Any], problem: str) -> None:
    client = await browser()
    conversation_id = await new_conversation(client, "kept")
    response = await rename(client, conversation_id, body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid fields",
        "code": "invalid_request",
        "fields": {"title": [problem]},
    }
    assert (await Conversation.objects.aget()).title == "kept"


async def test_it_renames_only_the_callers_conversations() -> None:
    alice, bob = await browser(), await browser()
    conversation_id = await new_conversation(alice, "alice's")
    for target in (conversation_id, str(uuid.uuid4())):
        response = await rename(bob, target, {"title": "mine"})
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    strict = AsyncClient(enforce_csrf_checks=True)
    strict.cookies = alice.cookies
    assert (await rename(strict, conversation_id, {"title": "t"})).status_code == 403
    response = await alice.patch(
        f"/api/conversations/{conversation_id}", "title=x", content_type="text/plain"
    )
    assert response.status_code == 415
    assert (await Conversation.objects.aget()).title == "alice's"


# --- search and pages -----------------------------------------------------------------


async def test_it_searches_titles_and_messages() -> None:
    client = await browser()
    recipe = await new_conversation(client, "Pasta recipe")
    trip = await new_conversation(client, "Where to go in PORTUGAL?")
    await new_conversation(client, "unrelated")
    await rename(client, trip, {"title": "Holidays"})

    async def found(query: str) -> list[str]:
        response = await client.get("/api/conversations", {"q": query})
        assert response.status_code == 200
        return [c["id"] for c in response.json()["results"]]

    assert await found("pasta") == [recipe]
    assert await found("portugal") == [trip]  # in a message, not the title
    assert await found("holi") == [trip]
    assert await found("offline demo agent") == await found("")  # every reply
    assert len(await found("")) == 3
    assert await found("100%_") == []


async def test_search_leaves_out_what_an_edit_replaced() -> None:
    client = await browser()
    conversation_id = await new_conversation(client, "first words")
    body = (await client.get(f"/api/conversations/{conversation_id}")).json()
    await read_stream(
        await chat(
            client,
            "second thoughts",
            conversation_id=conversation_id,
            edit=body["messages"][0]["id"],
        )
    )
    await rename(client, conversation_id, {"title": "Renamed"})
    for query, hits in (("first words", 0), ("second thoughts", 1)):
        response = await client.get("/api/conversations", {"q": query})
        assert len(response.json()["results"]) == hits


async def test_it_pages_through_conversations_newest_first() -> None:
    client = await browser()
    await new_conversation(client, "seed")
    owner_key = (await Conversation.objects.aget()).owner_key
    now = timezone.now()
    await Conversation.objects.abulk_create(
        Conversation(
            title=f"c{i:03}", backend="local", owner_key=owner_key, updated_at=now
        )
        for i in range(120)
    )
    # Same updated_at for all of those: the id orders them.
    seen: list[str] = []
    url: str | None = "/api/conversations?limit=50"
    pages = 0
    while url:
        response = await client.get(url)
        assert response.status_code == 200
        body = response.json()
        assert len(body["results"]) <= 50
        seen += [c["id"] for c in body["results"]]
        url = body["next"]
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 121
    everything = (await client.get("/api/conversations")).json()
    assert [c["id"] for c in everything["results"]] == seen
    assert everything["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("limit=1&limit=2", "limit"),
        ("q=" + "x" * 201, "q"),
        ("q=a%00b", "q"),
        ("cursor=nonsense", "cursor"),
        ("cursor=" + "MjAyNi0wMS0wMXx4", "cursor"),
    ],
)
async def test_it_refuses_bad_list_parameters(query: str, field: str) -> None:
    client = await browser()
    response = await client.get(f"/api/conversations?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert list(body["fields"]) == [field]
