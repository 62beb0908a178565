import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from posts.models import Post
from posts.tests.callers import Caller, csrf_token, refused_callers

NEW_POST = {"title": "Hello", "body": "First post"}


async def test_it_creates_a_post(as_editor: Caller, editor: User) -> None:
    response = await as_editor.send("POST", "/api/posts", NEW_POST)

    assert response.status_code == 201
    body = response.json()
    assert body["title"] == "Hello"
    assert body["body"] == "First post"
    assert body["author"] == "editor"
    assert body["published"] is False
    assert response["Location"] == f"/api/posts/{body['id']}"
    post = await Post.objects.select_related("author").aget(pk=body["id"])
    assert post.author == editor
    assert body == post.to_dict()


async def test_it_accepts_a_trailing_slash(as_editor: Caller) -> None:
    response = await as_editor.send("POST", "/api/posts/", NEW_POST)

    assert response.status_code == 201


async def test_it_publishes_when_asked(as_editor: Caller) -> None:
    response = await as_editor.send(
        "POST", "/api/posts", {**NEW_POST, "published": True}
    )

    assert response.status_code == 201
    assert response.json()["published"] is True


async def test_it_strips_the_title(as_editor: Caller) -> None:
    response = await as_editor.send(
        "POST", "/api/posts", {"title": "  Hello \n", "body": "  kept as is  "}
    )

    assert response.json()["title"] == "Hello"
    assert response.json()["body"] == "  kept as is  "


@pytest.mark.parametrize("caller", ["editor", "editor_key"], indirect=True)
async def test_it_lets_editors_create(caller: Caller) -> None:
    response = await caller.send("POST", "/api/posts", NEW_POST)

    assert response.status_code == 201
    assert await Post.objects.acount() == 1


@refused_callers
async def test_it_refuses_callers_without_permission(
    caller: Caller, status: int
) -> None:
    response = await caller.send("POST", "/api/posts", NEW_POST)

    assert response.status_code == status
    assert response.json()["error"]
    if status == 401:
        assert response["WWW-Authenticate"] == "Bearer"
    assert await Post.objects.acount() == 0


@pytest.mark.parametrize(
    "headers", [{}, {"X-CSRFToken": "x" * 32}], ids=["no-token", "wrong-token"]
)
async def test_it_refuses_a_session_write_without_the_csrf_token(
    editor_session: AsyncClient, headers: dict[str, str]
) -> None:
    await csrf_token(editor_session)

    response = await editor_session.post(
        "/api/posts", NEW_POST, "application/json", headers=headers
    )

    assert response.status_code == 403
    assert response.json()["code"] == "csrf"
    assert await Post.objects.acount() == 0


async def test_it_accepts_a_session_write_with_the_csrf_token(
    editor_session: AsyncClient,
) -> None:
    token = await csrf_token(editor_session)

    response = await editor_session.post(
        "/api/posts", NEW_POST, "application/json", headers={"X-CSRFToken": token}
    )

    assert response.status_code == 201


async def test_it_needs_no_csrf_token_with_an_api_key(
    editor_session: AsyncClient, editor_key: str
) -> None:
    # Even beside a session cookie: browsers never add the Authorization header.
    response = await editor_session.post(
        "/api/posts",
        NEW_POST,
        "application/json",
        headers={"Authorization": f"Bearer {editor_key}"},
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    "header", ["Basic ZWRpdG9yOnB3", "Bearer", "Bearer   ", "Token abc"]
)
async def test_it_refuses_a_malformed_authorization_header(
    async_client: AsyncClient, header: str
) -> None:
    response = await async_client.post(
        "/api/posts", NEW_POST, "application/json", headers={"Authorization": header}
    )

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert await Post.objects.acount() == 0


@pytest.mark.parametrize(
    "raw", [b"{", b'{"title": "a",}', b"\xff\xfe", b'{"title": "\\ud800"}']
)
async def test_it_rejects_malformed_json(as_editor: Caller, raw: bytes) -> None:
    response = await as_editor.send("POST", "/api/posts", raw=raw)

    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON")
    assert await Post.objects.acount() == 0


@pytest.mark.parametrize("raw", [b"[]", b'"title"', b"null", b"1"])
async def test_it_rejects_json_that_is_not_an_object(
    as_editor: Caller, raw: bytes
) -> None:
    response = await as_editor.send("POST", "/api/posts", raw=raw)

    assert response.status_code == 400
    assert response.json() == {"error": "request body must be a JSON object"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"body": "b"}, "title", id="title-missing"),
        pytest.param({"title": "t"}, "body", id="body-missing"),
        pytest.param({"title": "   ", "body": "b"}, "title", id="title-blank"),
        pytest.param({"title": "t", "body": ""}, "body", id="body-empty"),
        pytest.param({"title": 1, "body": "b"}, "title", id="title-number"),
        pytest.param({"title": None, "body": "b"}, "title", id="title-null"),
        pytest.param({"title": "t", "body": ["b"]}, "body", id="body-list"),
        pytest.param(
            {"title": "t", "body": "b", "published": "yes"},
            "published",
            id="published-string",
        ),
        pytest.param(
            {"title": "t", "body": "b", "published": 1}, "published", id="published-1"
        ),
        pytest.param(
            {"title": "t", "body": "b", "author": "x"}, "author", id="unknown-field"
        ),
        pytest.param({"title": "t" * 201, "body": "b"}, "title", id="title-too-long"),
        pytest.param({"title": "a\x00b", "body": "b"}, "title", id="title-nul"),
        pytest.param({"title": "t", "body": "a \x00 b"}, "body", id="body-nul"),
    ],
)
async def test_it_rejects_invalid_fields(
    as_editor: Caller, data: dict, field: str
) -> None:
    response = await as_editor.send("POST", "/api/posts", data)

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid fields"
    assert list(body["fields"]) == [field]
    assert all(isinstance(message, str) for message in body["fields"][field])
    assert await Post.objects.acount() == 0


async def test_it_reports_every_invalid_field_at_once(as_editor: Caller) -> None:
    response = await as_editor.send("POST", "/api/posts", {"extra": 1})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"title", "body", "extra"}


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"],
)
async def test_it_rejects_bodies_that_are_not_json(
    as_editor: Caller, content_type: str
) -> None:
    response = await as_editor.send(
        "POST",
        "/api/posts",
        raw=b'{"title": "t", "body": "b"}',
        content_type=content_type,
    )

    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert await Post.objects.acount() == 0


async def test_it_accepts_a_charset_parameter(as_editor: Caller) -> None:
    response = await as_editor.send(
        "POST", "/api/posts", NEW_POST, content_type="application/json; charset=utf-8"
    )

    assert response.status_code == 201


async def test_it_rejects_a_body_over_the_size_limit(
    as_editor: Caller, settings
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = await as_editor.send(
        "POST", "/api/posts", {"title": "big", "body": "x" * 1024}
    )

    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 1024 bytes"}
    assert await Post.objects.acount() == 0


async def test_it_accepts_a_body_at_the_size_limit(as_editor: Caller, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    envelope = len(b'{"title":"fits","body":""}')

    response = await as_editor.send(
        "POST", "/api/posts", {"title": "fits", "body": "x" * (1024 - envelope)}
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    "text",
    [
        "Emoji 🎉👩‍👩‍👧‍👦 and flags 🇫🇷",
        "مرحبا بالعالم — שלום עולם",
        "Zalgo: ẑ̵̳a̷l̶g̸o̵ and 中文 and Ελληνικά",
    ],
)
async def test_it_keeps_unicode_text(as_editor: Caller, text: str) -> None:
    created = await as_editor.send("POST", "/api/posts", {"title": text, "body": text})

    assert created.status_code == 201
    response = await as_editor.send("GET", f"/api/posts/{created.json()['id']}")
    assert response.json()["title"] == text
    assert response.json()["body"] == text


async def test_it_counts_the_title_limit_in_characters(as_editor: Caller) -> None:
    # 200 four-byte characters: 800 bytes, still 200 characters.
    fits = await as_editor.send(
        "POST", "/api/posts", {"title": "🎉" * 200, "body": "b"}
    )
    too_long = await as_editor.send(
        "POST", "/api/posts", {"title": "🎉" * 201, "body": "b"}
    )

    assert fits.status_code == 201
    assert fits.json()["title"] == "🎉" * 200
    assert too_long.status_code == 400
    assert list(too_long.json()["fields"]) == ["title"]
    assert await Post.objects.acount() == 1
