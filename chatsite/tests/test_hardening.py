"""Hardening in the app itself: the client's address behind proxies, deploy
checks for our middleware, the admin login throttle, search lengths, what
readiness tells the public, and Permissions-Policy.

What needs a real server (uvicorn's flags, the Host header as sent, the ASGI body
guard, a Redis outage through REDIS_URL) is tested live in test_hardening_live.py.
"""

import logging
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import path

from posts.models import Post
from posts.views import MAX_QUERY_CHARS

BASE_DIR = Path(__file__).resolve().parents[2]
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


async def address(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.META["REMOTE_ADDR"])


# A URLconf that shows the address the app sees, for `pytest.mark.urls(__name__)`.
urlpatterns = [path("address", address)]


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    cache.clear()


# --- Search lengths -------------------------------------------------------------------


@pytest.fixture
def post(transactional_db: None) -> Post:
    author = User.objects.create_user("author")
    return Post.objects.create(
        title="Django tips", body="b", author=author, published=True
    )


async def test_it_refuses_an_overlong_search(async_client: AsyncClient, post) -> None:
    response = await async_client.get("/api/posts", {"q": "x" * 60_000})

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid query parameter",
        "fields": {"q": [f"must be at most {MAX_QUERY_CHARS} characters"]},
    }


async def test_it_searches_up_to_the_limit(async_client: AsyncClient, post) -> None:
    query = "Django" + " " * 10 + "x" * (MAX_QUERY_CHARS - 16)
    assert len(query) == MAX_QUERY_CHARS
    response = await async_client.get("/api/posts", {"q": "  Django tips  "})
    assert response.json()["count"] == 1
    response = await async_client.get("/api/posts", {"q": query})
    assert response.status_code == 200
    assert response.json()["count"] == 0


def test_the_admin_shows_nothing_for_an_overlong_search(
    admin_client: Client, post
) -> None:
    response = admin_client.get("/admin/posts/post/", {"q": "x" * 60_000})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    assert f"Search for at most {MAX_QUERY_CHARS} characters." in response.text
    response = admin_client.get("/admin/posts/post/", {"q": "django"})
    assert list(response.context["cl"].result_list) == [post]


# --- What readiness tells the public --------------------------------------------------


@pytest.mark.django_db
async def test_readiness_names_failed_checks_without_their_errors(
    async_client: AsyncClient, settings, caplog
) -> None:
    settings.REDIS_URL = DEAD_REDIS_URL
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": DEAD_REDIS_URL,
        }
    }
    settings.CHAT_BACKEND = "chat.backends.no_such_module.Backend"

    with caplog.at_level(logging.WARNING, logger="chatsite.views"):
        response = await async_client.get("/api/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["cache", "chat_backend"]
    assert body["checks"]["cache"] == {"ok": False}
    assert body["checks"]["chat_backend"] == {"ok": False}
    assert body["checks"]["database"]["ok"] is True
    for detail in ("127.0.0.1", "111", "Error", "no_such_module"):
        assert detail not in response.text
    assert "readiness check cache failed: ConnectionError" in caplog.text
    assert "no_such_module" in caplog.text
