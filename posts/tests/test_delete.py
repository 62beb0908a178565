from collections.abc import Awaitable, Callable

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from posts.models import Post
from posts.tests.callers import Caller, csrf_token, refused_callers

MakePost = Callable[..., Awaitable[Post]]


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_it_deletes_a_post(
    as_editor: Caller, make_post: MakePost, suffix: str
) -> None:
    post = await make_post()
    kept = await make_post("Kept")

    response = await as_editor.send("DELETE", f"/api/posts/{post.pk}{suffix}")

    assert response.status_code == 204
    assert response.content == b""
    assert [p.pk async for p in Post.objects.all()] == [kept.pk]


async def test_it_deletes_a_draft(as_editor: Caller, make_post: MakePost) -> None:
    draft = await make_post(published=False)

    response = await as_editor.send("DELETE", f"/api/posts/{draft.pk}")

    assert response.status_code == 204
    assert not await Post.objects.filter(pk=draft.pk).aexists()


@pytest.mark.parametrize("caller", ["editor", "editor_key"], indirect=True)
async def test_it_lets_editors_delete(caller: Caller, make_post: MakePost) -> None:
    post = await make_post()

    response = await caller.send("DELETE", f"/api/posts/{post.pk}")

    assert response.status_code == 204
    assert await Post.objects.acount() == 0


@refused_callers
async def test_it_refuses_callers_without_permission(
    caller: Caller, make_post: MakePost, status: int
) -> None:
    post = await make_post()

    response = await caller.send("DELETE", f"/api/posts/{post.pk}")

    assert response.status_code == status
    assert response.json()["error"]
    assert await Post.objects.filter(pk=post.pk).aexists()


async def test_it_refuses_the_author_without_delete_permission(
    callers: dict[str, Caller], make_post: MakePost, reader: User
) -> None:
    post = await make_post(author=reader)

    response = await callers["reader"].send("DELETE", f"/api/posts/{post.pk}")

    assert response.status_code == 403
    assert await Post.objects.acount() == 1


async def test_it_refuses_a_session_delete_without_csrf_token(
    editor_session: AsyncClient, make_post: MakePost
) -> None:
    post = await make_post()
    await csrf_token(editor_session)

    response = await editor_session.delete(f"/api/posts/{post.pk}")

    assert response.status_code == 403
    assert response.json()["code"] == "csrf"
    assert await Post.objects.acount() == 1


async def test_it_accepts_a_session_delete_with_the_csrf_token(
    editor_session: AsyncClient, make_post: MakePost
) -> None:
    post = await make_post()
    token = await csrf_token(editor_session)

    response = await editor_session.delete(
        f"/api/posts/{post.pk}", headers={"X-CSRFToken": token}
    )

    assert response.status_code == 204
    assert await Post.objects.acount() == 0


async def test_it_answers_404_for_a_missing_post(
    as_editor: Caller, make_post: MakePost
) -> None:
    await make_post()

    response = await as_editor.send("DELETE", "/api/posts/12345")

    assert response.status_code == 404
    assert response.json() == {"error": "post not found"}
    assert await Post.objects.acount() == 1


async def test_it_answers_404_the_second_time(
    as_editor: Caller, make_post: MakePost
) -> None:
    post = await make_post()
    await as_editor.send("DELETE", f"/api/posts/{post.pk}")

    response = await as_editor.send("DELETE", f"/api/posts/{post.pk}")

    assert response.status_code == 404
