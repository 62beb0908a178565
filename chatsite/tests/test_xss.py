"""Script payloads in user content stay inert: escaped in every admin page that
shows them, plain JSON strings (with nosniff) in the API.

HTML pages are checked with a parser, not by searching for strings: no element,
attribute or URL scheme from a payload may appear in the parsed document, and the
payload's text must (so the page did show it).
"""

import json
from html.parser import HTMLParser

import pytest
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import AsyncClient, Client

from chat.models import Conversation, Message
from chatsite.models import ApiKey
from posts.models import Post

pytestmark = pytest.mark.django_db(transaction=True)

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "javascript:alert(1)",
]
# Everything at once, for fields shown in one place.
ALL = " ".join(PAYLOADS)


class Inertness(HTMLParser):
    """Collects what a payload would have turned into, had it been interpreted."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.shown: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            value = value or ""
            self.shown.append(value)
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}={value!r}>")
            if name in URL_ATTRIBUTES and value.strip().lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"<{tag} {name}={value!r}>")
            if tag == "img" and name == "src" and value == "x":
                self.problems.append(f"<{tag} {name}={value!r}>")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and "alert(1)" in data:
            self.problems.append(f"<script>{data}</script>")
        self.shown.append(data)


URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href"}


def assert_inert(html: str, *shown: str) -> None:
    """No payload became markup, and each of `shown` is on the page as text or
    as an attribute value (an input's), which proves the page rendered it."""
    parser = Inertness()
    parser.feed(html)
    parser.close()
    assert parser.problems == []
    for text in shown:
        assert any(text in piece for piece in parser.shown) or text in "".join(
            parser.shown
        ), text


@pytest.fixture
def author() -> User:
    # Usernames cannot hold these through the forms, but can through the ORM.
    return User.objects.create_user(username="<script>alert(1)</script>")


@pytest.fixture
def post(author: User) -> Post:
    return Post.objects.create(title=ALL[:200], body=ALL, author=author)


@pytest.fixture
def api_key(author: User) -> ApiKey:
    key = ApiKey(user=author, name=ALL[:100])
    key.set_new_key()
    key.save()
    return key


# --- the admin --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "shown"),
    [
        ("/admin/posts/post/", "{post.title}"),
        ("/admin/posts/post/{post.pk}/change/", "{post.title}"),
        ("/admin/posts/post/{post.pk}/delete/", "{post.title}"),
        ("/admin/posts/post/{post.pk}/history/", "{post.title}"),
        ("/admin/chatsite/apikey/", "{key.name}"),
        ("/admin/chatsite/apikey/{key.pk}/change/", "{key.name}"),
    ],
)
def test_post_titles_and_key_names_are_inert_in_the_admin(
    admin_client: Client, post: Post, api_key: ApiKey, page: str, shown: str
) -> None:
    stored = {"post": post, "key": api_key}
    response = admin_client.get(page.format(**stored))

    assert response.status_code == 200
    assert_inert(response.content.decode(), shown.format(**stored))


def test_the_change_form_shows_the_body_inert(admin_client: Client, post: Post) -> None:
    response = admin_client.get(f"/admin/posts/post/{post.pk}/change/")

    assert_inert(response.content.decode(), ALL)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_search_term_is_inert_in_the_changelist(
    admin_client: Client, post: Post, payload: str
) -> None:
    response = admin_client.get("/admin/posts/post/", {"q": payload})

    assert response.status_code == 200
    assert_inert(response.content.decode(), payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_post_added_in_the_admin_is_inert_in_its_message_and_history(
    admin_client: Client, payload: str
) -> None:
    response = admin_client.post(
        "/admin/posts/post/add/",
        {"title": payload, "body": payload, "published": "on"},
        follow=True,
    )

    assert response.status_code == 200
    assert Post.objects.get().title == payload
    # The changelist after the redirect shows "The post “…” was added".
    assert_inert(response.content.decode(), payload)
    # The admin index lists it under recent actions.
    assert_inert(admin_client.get("/admin/").content.decode(), payload)


@pytest.mark.parametrize(
    ("page", "shown"),
    [
        ("/admin/chat/conversation/", "title"),
        ("/admin/chat/conversation/{conversation.pk}/change/", "content"),
        ("/admin/chat/message/", "str"),
        ("/admin/chat/message/{message.pk}/change/", "content"),
    ],
)
def test_chat_content_is_inert_in_the_admin(
    admin_client: Client, author: User, page: str, shown: str
) -> None:
    if not admin.site.is_registered(Conversation):
        pytest.skip("conversations have no admin")
    conversation = Conversation.objects.create(
        owner=author, title=ALL[:200], backend="local"
    )
    # The agent's reply, as it would quote the user.
    message = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content=ALL,
        created_at=conversation.created_at,
    )
    expected = {"title": conversation.title, "content": ALL, "str": str(message)}

    response = admin_client.get(page.format(conversation=conversation, message=message))

    assert response.status_code == 200
    assert_inert(response.content.decode(), expected[shown])


def test_the_login_page_keeps_a_javascript_next_inert(client: Client) -> None:
    User.objects.create_superuser("boss", password="a long passphrase")
    page = client.get("/admin/login/", {"next": "javascript:alert(1)"})

    assert_inert(page.content.decode())
    response = client.post(
        "/admin/login/?next=javascript:alert(1)",
        {"username": "boss", "password": "a long passphrase"},
    )

    assert response.status_code == 302
    assert response["Location"].startswith("/")


# --- the API ----------------------------------------------------------------------


def assert_json(response, status: int = 200) -> object:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
    return json.loads(response.content)


@pytest.fixture
def writer(author: User) -> dict[str, str]:
    author.user_permissions.set(
        Permission.objects.filter(content_type__app_label="posts")
    )
    key = ApiKey(user=author, name="writer")
    raw = key.set_new_key()
    key.save()
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_post_content_comes_back_as_json_strings(
    client: Client, writer: dict[str, str], payload: str
) -> None:
    created = assert_json(
        client.post(
            "/api/posts",
            {"title": payload, "body": payload, "published": True},
            content_type="application/json",
            headers=writer,
        ),
        201,
    )
    detail = assert_json(client.get(f"/api/posts/{created['id']}"))
    found = assert_json(client.get("/api/posts", {"q": payload}))

    assert detail["title"] == detail["body"] == payload
    assert detail["author"] == "<script>alert(1)</script>"
    assert [p["title"] for p in found["results"]] == [payload]


def test_a_payload_field_name_is_reflected_only_as_json(
    client: Client, writer: dict[str, str]
) -> None:
    error = assert_json(
        client.post(
            "/api/posts",
            {"title": "t", "body": "b", PAYLOADS[0]: 1},
            content_type="application/json",
            headers=writer,
        ),
        400,
    )

    assert error["fields"] == {PAYLOADS[0]: ["unknown field"]}


def test_a_payload_in_an_api_url_gets_a_json_404(client: Client) -> None:
    error = assert_json(client.get("/api/posts/<script>alert(1)</script>"), 404)

    assert error == {"error": "not found", "code": "not_found"}


async def test_conversations_and_agent_replies_come_back_as_json_strings(
    async_client: AsyncClient, writer: dict[str, str]
) -> None:
    # The offline agent quotes the message, so its reply carries the payloads too.
    try:
        stream = await async_client.post(
            "/api/chat",
            {"message": ALL},
            content_type="application/json",
            headers=writer,
        )
        assert stream["Content-Type"] == "text/event-stream; charset=utf-8"
        assert stream["X-Content-Type-Options"] == "nosniff"
        body = b"".join([part async for part in stream.streaming_content]).decode()
        listed = assert_json(
            await async_client.get("/api/conversations", headers=writer)
        )
        conversation = listed["results"][0]
        detail = assert_json(
            await async_client.get(
                f"/api/conversations/{conversation['id']}", headers=writer
            )
        )
    finally:
        await sync_to_async(connections.close_all)()

    frames = [json.loads(line[6:]) for line in body.split("\n") if line[:6] == "data: "]
    assert ALL in frames[-1]["full_response"]
    assert conversation["title"] == ALL[:80]
    question, answer = detail["messages"]
    assert question["content"] == ALL
    assert ALL in answer["content"]
