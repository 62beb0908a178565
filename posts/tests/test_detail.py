from collections.abc import Awaitable, Callable

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from posts.models import Post
from posts.tests.callers import Caller

MakePost = Callable[..., Awaitable[Post]]


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_it_shows_a_published_post(
    async_client: AsyncClient, make_post: MakePost, suffix: str
) -> None:
    post = await make_post("Hello", body="World")

    response = await async_client.get(f"/api/posts/{post.pk}{suffix}")

    assert response.status_code == 200
    assert response.json() == {
        "id": post.pk,
        "title": "Hello",
        "body": "World",
        "author": "author",
        "published": True,
        "created_at": post.created_at.isoformat(),
        "updated_at": post.updated_at.isoformat(),
    }


async def test_it_hides_a_draft_from_anonymous_callers(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    draft = await make_post(published=False)

    response = await async_client.get(f"/api/posts/{draft.pk}")

    assert response.status_code == 404
    assert response.json() == {"error": "post not found"}


async def test_it_hides_a_draft_from_other_users(
    callers: dict[str, Caller], make_post: MakePost
) -> None:
    draft = await make_post(published=False)

    response = await callers["reader"].send("GET", f"/api/posts/{draft.pk}")

    assert response.status_code == 404


async def test_it_shows_a_draft_to_its_author(
    callers: dict[str, Caller], make_post: MakePost, reader: User
) -> None:
    draft = await make_post(published=False, author=reader)

    response = await callers["reader"].send("GET", f"/api/posts/{draft.pk}")

    assert response.status_code == 200
    assert response.json()["published"] is False


@pytest.mark.parametrize("caller", ["editor", "editor_key"], indirect=True)
async def test_it_shows_a_draft_to_editors(caller: Caller, make_post: MakePost) -> None:
    draft = await make_post(published=False)

    response = await caller.send("GET", f"/api/posts/{draft.pk}")

    assert response.status_code == 200


@pytest.mark.parametrize("post_id", ["0", "999999", "99999999999999999999999"])
async def test_it_answers_404_for_a_missing_post(
    async_client: AsyncClient, post_id: str
) -> None:
    response = await async_client.get(f"/api/posts/{post_id}")

    assert response.status_code == 404
    assert response.json() == {"error": "post not found"}


@pytest.mark.parametrize(
    "path", ["/api/posts/abc", "/api/posts/-1", "/api/posts/1/x", "/api/nothing"]
)
async def test_it_answers_json_404_for_unknown_api_paths(
    async_client: AsyncClient, path: str
) -> None:
    response = await async_client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "not found", "code": "not_found"}


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_unknown_api_paths_answer_json_404_in_debug_mode_too(
    async_client: AsyncClient, settings, method: str
) -> None:
    settings.DEBUG = True
    response = await async_client.generic(method, "/api/no/such/thing")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "not found", "code": "not_found"}


async def test_it_answers_405_for_other_methods(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    post = await make_post()

    response = await async_client.post(f"/api/posts/{post.pk}", {}, "application/json")

    assert response.status_code == 405
    assert response["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"
    assert response.json()["error"] == "method POST is not allowed"
