import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from posts.models import Post
from testing.admin import filter_links


@pytest.fixture
def post(author: User) -> Post:
    return Post.objects.create(
        title="Django tips", body="Use the admin", author=author, published=True
    )


@pytest.mark.parametrize("query", ["", "?q=django", "?q=nothing+matches"])
def test_it_shows_the_changelist(admin_client: Client, post: Post, query: str) -> None:
    response = admin_client.get(f"/admin/posts/post/{query}")

    assert response.status_code == 200


def test_it_follows_every_filter_and_date_link(
    admin_client: Client, post: Post
) -> None:
    links = filter_links(admin_client, "/admin/posts/post/")
    now = timezone.now()
    # The date hierarchy drills down year, month, then day.
    links += [
        f"?created_at__year={now.year}",
        f"?created_at__year={now.year}&created_at__month={now.month}",
        f"?created_at__year={now.year}&created_at__month={now.month}"
        f"&created_at__day={now.day}",
    ]

    for link in links:
        response = admin_client.get(f"/admin/posts/post/{link}")
        # An invalid lookup would redirect to "?e=1" instead.
        assert response.status_code == 200, link
    assert len(links) > 10


def test_it_searches_titles_and_bodies(admin_client: Client, author: User) -> None:
    Post.objects.create(title="Django tips", body="b", author=author)
    Post.objects.create(title="Cooking", body="A Django recipe", author=author)
    Post.objects.create(title="Gardening", body="Tomatoes", author=author)

    response = admin_client.get("/admin/posts/post/", {"q": "django"})

    shown = {post.title for post in response.context["cl"].result_list}
    assert shown == {"Django tips", "Cooking"}


def test_it_shows_the_add_form(admin_client: Client) -> None:
    response = admin_client.get("/admin/posts/post/add/")

    assert response.status_code == 200
    assert set(response.context["adminform"].form.fields) == {
        "title",
        "body",
        "published",
    }


def test_it_sets_the_author_from_the_request_on_add(
    admin_client: Client, admin_user: User
) -> None:
    response = admin_client.post(
        "/admin/posts/post/add/",
        {"title": "From the admin", "body": "Hello", "published": "on"},
    )

    assert response.status_code == 302
    post = Post.objects.get()
    assert post.author == admin_user
    assert (post.title, post.published) == ("From the admin", True)


def test_it_keeps_the_author_on_change(
    admin_client: Client, post: Post, author: User
) -> None:
    response = admin_client.post(
        f"/admin/posts/post/{post.pk}/change/",
        {"title": "Renamed", "body": post.body},
    )

    assert response.status_code == 302
    post.refresh_from_db()
    assert (post.title, post.published, post.author) == ("Renamed", False, author)


def test_it_shows_the_change_form(admin_client: Client, post: Post) -> None:
    response = admin_client.get(f"/admin/posts/post/{post.pk}/change/")

    assert response.status_code == 200
    assert "Django tips" in response.text
    assert "author" in response.text


def test_it_rejects_an_overlong_title(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/posts/post/add/", {"title": "x" * 201, "body": "b"}
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["title"]
    assert Post.objects.count() == 0


def test_it_shows_the_delete_confirmation(admin_client: Client, post: Post) -> None:
    response = admin_client.get(f"/admin/posts/post/{post.pk}/delete/")

    assert response.status_code == 200


def test_it_sends_anonymous_users_to_the_login_page(client: Client) -> None:
    response = client.get("/admin/posts/post/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
