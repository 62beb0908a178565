from collections.abc import Awaitable, Callable
from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from posts.models import Post
from posts.tests.callers import Caller, csrf_token, refused_callers

MakePost = Callable[..., Awaitable[Post]]
CHANGES = {"title": "Changed", "body": "New body", "published": True}


@pytest.fixture(params=["PUT", "PATCH"])
def method(request: pytest.FixtureRequest) -> str:
    """Each method that writes a post: a test that takes it runs with both."""
    return request.param


async def unchanged(post: Post) -> bool:
    stored = await Post.objects.select_related("author").aget(pk=post.pk)
    return stored.to_dict() == post.to_dict()


async def test_it_replaces_a_post(as_editor: Caller, make_post: MakePost) -> None:
    post = await make_post("Old", body="Old body", published=True)

    response = await as_editor.send(
        "PUT", f"/api/posts/{post.pk}", {"title": "New", "body": "New body"}
    )

    assert response.status_code == 200
    body = response.json()
    # A replacement without `published` unpublishes: PUT sends the whole post.
    assert (body["title"], body["body"], body["published"]) == (
        "New",
        "New body",
        False,
    )
    assert body["author"] == "author"
    assert body["created_at"] == post.created_at.isoformat()
    assert datetime.fromisoformat(body["updated_at"]) > post.updated_at
    stored = await Post.objects.select_related("author").aget(pk=post.pk)
    assert stored.to_dict() == body


async def test_it_patches_only_the_given_fields(
    as_editor: Caller, make_post: MakePost
) -> None:
    post = await make_post("Old", body="Old body", published=True)

    response = await as_editor.send(
        "PATCH", f"/api/posts/{post.pk}", {"title": "  New  "}
    )

    assert response.status_code == 200
    stored = await Post.objects.aget(pk=post.pk)
    assert (stored.title, stored.body, stored.published) == ("New", "Old body", True)


async def test_it_accepts_an_empty_patch(
    as_editor: Caller, make_post: MakePost
) -> None:
    post = await make_post()

    response = await as_editor.send("PATCH", f"/api/posts/{post.pk}", {})

    assert response.status_code == 200
    assert response.json()["title"] == post.title


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_it_accepts_a_trailing_slash_or_not(
    as_editor: Caller, make_post: MakePost, method: str, suffix: str
) -> None:
    post = await make_post()

    response = await as_editor.send(method, f"/api/posts/{post.pk}{suffix}", CHANGES)

    assert response.status_code == 200


@pytest.mark.parametrize("caller", ["editor", "editor_key"], indirect=True)
async def test_it_lets_editors_update(
    caller: Caller, make_post: MakePost, method: str
) -> None:
    post = await make_post(published=False)

    response = await caller.send(method, f"/api/posts/{post.pk}", CHANGES)

    assert response.status_code == 200
    assert (await Post.objects.aget(pk=post.pk)).title == "Changed"


@refused_callers
async def test_it_refuses_callers_without_permission(
    caller: Caller, make_post: MakePost, method: str, status: int
) -> None:
    post = await make_post()

    response = await caller.send(method, f"/api/posts/{post.pk}", CHANGES)

    assert response.status_code == status
    assert await unchanged(post)


async def test_it_refuses_the_author_without_change_permission(
    callers: dict[str, Caller], make_post: MakePost, reader: User
) -> None:
    post = await make_post(author=reader)

    response = await callers["reader"].send("PATCH", f"/api/posts/{post.pk}", CHANGES)

    assert response.status_code == 403
    assert await unchanged(post)


async def test_it_refuses_a_session_write_without_csrf_token(
    editor_session: AsyncClient, make_post: MakePost, method: str
) -> None:
    post = await make_post()
    await csrf_token(editor_session)

    response = await editor_session.generic(
        method, f"/api/posts/{post.pk}", b'{"title": "x"}', "application/json"
    )

    assert response.status_code == 403
    assert response.json()["code"] == "csrf"
    assert await unchanged(post)


async def test_it_answers_404_for_a_missing_post(
    as_editor: Caller, method: str
) -> None:
    response = await as_editor.send(method, "/api/posts/12345", CHANGES)

    assert response.status_code == 404
    assert response.json() == {"error": "post not found"}
    assert await Post.objects.acount() == 0


@pytest.mark.parametrize(
    ("method", "data", "field"),
    [
        ("PUT", {"title": "only a title"}, "body"),
        ("PUT", {"title": "", "body": "b"}, "title"),
        ("PATCH", {"title": ""}, "title"),
        ("PATCH", {"body": ""}, "body"),
        ("PATCH", {"published": None}, "published"),
        ("PATCH", {"title": "x" * 201}, "title"),
        ("PATCH", {"title": "nul\x00"}, "title"),
        ("PATCH", {"author": "editor"}, "author"),
        ("PATCH", {"id": 7}, "id"),
    ],
)
async def test_it_rejects_invalid_fields(
    as_editor: Caller, make_post: MakePost, method: str, data: dict, field: str
) -> None:
    post = await make_post()

    response = await as_editor.send(method, f"/api/posts/{post.pk}", data)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid fields"
    assert list(response.json()["fields"]) == [field]
    assert await unchanged(post)


async def test_it_rejects_malformed_json(
    as_editor: Caller, make_post: MakePost, method: str
) -> None:
    post = await make_post()

    response = await as_editor.send(method, f"/api/posts/{post.pk}", raw=b"{'a': 1}")

    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON")
    assert await unchanged(post)


async def test_it_rejects_bodies_that_are_not_json(
    as_editor: Caller, make_post: MakePost, method: str
) -> None:
    post = await make_post()

    response = await as_editor.send(
        method, f"/api/posts/{post.pk}", raw=b"title=x", content_type="text/plain"
    )

    assert response.status_code == 415
    assert await unchanged(post)


async def test_it_rejects_a_body_over_the_size_limit(
    as_editor: Caller, make_post: MakePost, method: str, settings
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    post = await make_post()

    response = await as_editor.send(
        method, f"/api/posts/{post.pk}", {"title": "t", "body": "🎉" * 600}
    )

    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 2048 bytes"}
    assert await unchanged(post)
