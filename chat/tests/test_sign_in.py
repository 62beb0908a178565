"""The chat page and API around sign-in: who is signed in and how to sign out,
sign-in required (CHAT_REQUIRE_LOGIN), and the conversations a browser started
anonymously moving to the account it signs in to."""

import uuid
from html.parser import HTMLParser

import pytest
from django.http import HttpHeaders
from django.test import AsyncClient

from chat.models import Conversation
from testing.easyauth import principal_headers
from testing.sse import chat, data_frames, read_stream

pytestmark = pytest.mark.django_db(transaction=True)

SIGN_OUT = "/.auth/logout?post_logout_redirect_uri=/"


class Links(HTMLParser):
    """The page's links and forms by id: {id: href or action}."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: dict[str, str | None] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("id"):
            self.found[found["id"]] = found.get("href")
        if tag == "form" and found.get("action"):
            self.found[f"form {found['action']}"] = found.get("method")


def sign_in_as(client: AsyncClient, headers: dict[str, str]) -> None:
    client.defaults.update(HttpHeaders.to_asgi_names(headers))


async def browser(headers: dict[str, str] | None = None) -> AsyncClient:
    """A browser that has loaded the page, with the CSRF token its script sends."""
    client = AsyncClient()
    sign_in_as(client, headers or {})
    assert (await client.get("/")).status_code == 200
    client.cookies["csrftoken"] = "d" * 32
    client.defaults["X_CSRFTOKEN"] = "d" * 32
    return client


async def new_conversation(client: AsyncClient, message: str) -> str:
    data = data_frames(await read_stream(await chat(client, message)))
    return data[0]["conversation_id"]


async def test_the_page_shows_who_is_signed_in_and_how_to_sign_out(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    client = AsyncClient()
    sign_in_as(
        client, principal_headers(name="Grace Hopper", given_name=None, surname=None)
    )
    response = await client.get("/")
    html = response.content.decode()
    assert "Signed in as <strong>Grace Hopper</strong>" in html
    assert Links(html).found["sign-out"] == SIGN_OUT
    assert "sign-in" not in Links(html).found


async def test_an_anonymous_visitor_is_offered_the_sign_in(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    html = (await AsyncClient().get("/?q=1")).content.decode()
    assert "Signed in as" not in html
    links = Links(html).found
    assert links["sign-in"] == "/.auth/login/aad?post_login_redirect_uri=/%3Fq%3D1"


async def test_a_password_login_signs_out_through_django(django_user_model) -> None:
    # Django's login page is the admin's, for staff accounts only.
    user = await django_user_model.objects.acreate_user(
        "grace", password="x", first_name="Grace", is_staff=True
    )
    client = AsyncClient()
    await client.aforce_login(user)
    html = (await client.get("/")).content.decode()
    assert "Signed in as <strong>Grace</strong>" in html
    assert Links(html).found["form /admin/logout/"] == "post"
    response = await client.post("/admin/logout/", {"next": "/"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert "Signed in as" not in (await client.get("/")).content.decode()


async def test_without_sign_in_the_page_shows_no_account_links() -> None:
    html = (await AsyncClient().get("/")).content.decode()
    assert 'id="account"' not in html


async def test_sign_in_required_sends_the_page_to_the_ingress(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    settings.CHAT_REQUIRE_LOGIN = True
    client = AsyncClient()
    response = await client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/.auth/login/aad?post_login_redirect_uri=/"
    sign_in_as(client, principal_headers())
    assert (await client.get("/")).status_code == 200


async def test_sign_in_required_without_the_ingress_uses_django_login(
    settings,
) -> None:
    settings.CHAT_REQUIRE_LOGIN = True
    response = await AsyncClient().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


async def test_sign_in_required_answers_the_api_with_401(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    settings.CHAT_REQUIRE_LOGIN = True
    client = AsyncClient()
    conversation_id = uuid.uuid4()
    for response in (
        await chat(client, "hello"),
        await client.get("/api/conversations"),
        await client.get(f"/api/conversations/{conversation_id}"),
        await client.get(f"/api/conversations/{conversation_id}/stream"),
        await client.post(f"/api/chat/{conversation_id}/stop"),
    ):
        assert response.status_code == 401
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": "sign in to chat", "code": "login_required"}
    sign_in_as(client, principal_headers())
    conversation = await new_conversation(client, "hello")
    listed = (await client.get("/api/conversations")).json()["results"]
    assert [c["id"] for c in listed] == [conversation]


async def test_conversations_move_to_the_account_at_sign_in(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    client = await browser()
    before = [await new_conversation(client, m) for m in ("first", "second")]
    stranger = await browser()
    theirs = await new_conversation(stranger, "not yours")

    object_id = str(uuid.uuid4())
    sign_in_as(client, principal_headers(object_id))
    assert (await client.get("/")).status_code == 200

    listed = (await client.get("/api/conversations")).json()["results"]
    assert sorted(c["id"] for c in listed) == sorted(before)
    owners = {str(c.pk): c async for c in Conversation.objects.select_related("owner")}
    for conversation_id in before:
        assert owners[conversation_id].owner.username == object_id
        assert owners[conversation_id].owner_key == ""
    assert owners[theirs].owner is None
    # The same account in another browser finds them too.
    elsewhere = await browser(principal_headers(object_id))
    listed = (await elsewhere.get("/api/conversations")).json()["results"]
    assert sorted(c["id"] for c in listed) == sorted(before)


async def test_signing_out_leaves_them_with_the_account(settings) -> None:
    settings.AUTH_EASY_AUTH = True
    client = await browser()
    conversation_id = await new_conversation(client, "mine")
    sign_in_as(client, principal_headers())
    await client.get("/")
    client.defaults.clear()  # after /.auth/logout
    client = await browser()
    assert (await client.get("/api/conversations")).json()["results"] == []
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert conversation.owner_id is not None


async def test_a_password_login_takes_them_too(django_user_model) -> None:
    client = await browser()
    conversation_id = await new_conversation(client, "before logging in")
    user = await django_user_model.objects.acreate_user("ada", password="pw-123456")
    assert await client.alogin(username="ada", password="pw-123456")
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert conversation.owner_id == user.pk
