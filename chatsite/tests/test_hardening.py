"""Hardening in the app itself: the client's address behind proxies, deploy
checks for our middleware, the admin login throttle, search lengths, what
readiness tells the public, and Permissions-Policy.

What needs a real server (uvicorn's flags, the Host header as sent, the ASGI body
guard, a Redis outage through REDIS_URL) is tested live in test_hardening_live.py.
"""

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import path
from django.utils.csp import CSP

from chatsite.checks import check_csp_nonce, check_middleware_settings
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


# --- The client's address behind proxies ----------------------------------------------


async def seen_address(forwarded_for: str | None) -> str:
    """The address the app sees for a request from 127.0.0.1 (the test client's)."""
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = await AsyncClient().get("/address", headers=headers)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.urls(__name__)
@pytest.mark.parametrize(
    ("forwarded_for", "hops", "expected"),
    [
        # The ingress appended the real address after what the client wrote.
        ("203.0.113.9, 198.51.100.4", 1, "198.51.100.4"),
        ("1.1.1.1,2.2.2.2,  198.51.100.4", 1, "198.51.100.4"),
        ("198.51.100.4", 1, "198.51.100.4"),
        # Two proxies: the outer one appended the client, the inner one the outer.
        ("203.0.113.9, 198.51.100.4, 10.0.0.2", 2, "198.51.100.4"),
        # Fewer entries than proxies: the request did not pass them all.
        ("198.51.100.4", 2, "127.0.0.1"),
        # No proxy trusted: X-Forwarded-For is the client's own text.
        ("198.51.100.4", 0, "127.0.0.1"),
        (None, 1, "127.0.0.1"),
        ("", 1, "127.0.0.1"),
        ("not-an-address", 1, "127.0.0.1"),
        ("203.0.113.9, 198.51.100.4:5123", 1, "198.51.100.4"),
        ("203.0.113.9, 2001:db8::7", 1, "2001:db8::7"),
        ("203.0.113.9, [2001:db8::7]:5123", 1, "2001:db8::7"),
    ],
)
async def test_it_takes_the_address_the_trusted_proxy_appended(
    settings, forwarded_for: str | None, hops: int, expected: str
) -> None:
    settings.TRUSTED_PROXY_HOPS = hops

    assert await seen_address(forwarded_for) == expected


# --- Deploy checks for our middleware -------------------------------------------------


SECURE = {
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
    "SECURE_SSL_REDIRECT": True,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
}


@pytest.fixture
def secure_settings(settings):
    for name, value in SECURE.items():
        setattr(settings, name, value)
    return settings


def test_our_middleware_passes_with_secure_settings(secure_settings) -> None:
    assert check_middleware_settings() == []
    assert check_csp_nonce() == []


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("SECURE_HSTS_SECONDS", 0, "security.W004"),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", False, "security.W005"),
        ("SECURE_HSTS_PRELOAD", False, "security.W021"),
        ("SECURE_CONTENT_TYPE_NOSNIFF", False, "security.W006"),
        ("SECURE_SSL_REDIRECT", False, "security.W008"),
        ("SESSION_COOKIE_SECURE", False, "security.W012"),
        ("SESSION_COOKIE_HTTPONLY", False, "security.W015"),
        ("CSRF_COOKIE_SECURE", False, "security.W016"),
        ("X_FRAME_OPTIONS", "SAMEORIGIN", "security.W019"),
        ("SECURE_REFERRER_POLICY", None, "security.W022"),
        ("SECURE_REFERRER_POLICY", "no-such-policy", "security.E023"),
        ("SECURE_CROSS_ORIGIN_OPENER_POLICY", "no-such-policy", "security.E024"),
    ],
)
def test_it_reports_what_djangos_checks_report_for_its_own_middleware(
    secure_settings, setting: str, value: object, expected: str
) -> None:
    setattr(secure_settings, setting, value)

    assert [message.id for message in check_middleware_settings()] == [expected]


def test_it_reports_a_csp_nonce_without_its_context_processor(settings) -> None:
    settings.SECURE_CSP = {**settings.SECURE_CSP, "script-src": [CSP.NONCE]}
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "OPTIONS": {"context_processors": []}}
    ]

    assert [message.id for message in check_csp_nonce()] == ["security.W027"]


def test_manage_py_check_deploy_reports_insecure_settings() -> None:
    insecure = {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "deploy-check-" + os.urandom(32).hex(),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_SECURE_COOKIES": "0",
        "DJANGO_HSTS_SECONDS": "0",
        "DJANGO_SSL_REDIRECT": "0",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=BASE_DIR,
        env={**os.environ, **insecure},
        capture_output=True,
        text=True,
        timeout=60,
    )

    reported = result.stdout + result.stderr
    for check_id in ("W004", "W008", "W012", "W016"):
        assert f"security.{check_id}" in reported, reported


# --- The admin login throttle ---------------------------------------------------------


@pytest.fixture
def throttle_settings(settings):
    settings.ADMIN_LOGIN_MAX_FAILURES = 5
    settings.ADMIN_LOGIN_MAX_FAILURES_PER_IP = 12
    settings.ADMIN_LOGIN_LOCKOUT_SECONDS = 900
    # Fast hashing: the throttle is what is tested, not the hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.fixture(params=["locmem", "redis"])
def throttle(request, throttle_settings) -> Iterator[None]:
    if request.param == "redis":
        # A database of its own, emptied before and after.
        throttle_settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": "redis://127.0.0.1:6379/13",
            }
        }
    cache.clear()
    yield
    cache.clear()


def staff(username: str) -> User:
    return User.objects.create_user(
        username, password=f"right-{username}-password", is_staff=True
    )


def log_in(client: Client, username: str, password: str) -> HttpResponse:
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
    )


def logged_in(response: HttpResponse) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


THROTTLED = "Too many failed logins for this account or from this address"


@pytest.mark.django_db
def test_it_locks_an_account_after_failed_logins(throttle) -> None:
    staff("alice")
    client = Client()
    for _ in range(5):
        response = log_in(client, "alice", "wrong")
        assert response.status_code == 200
        assert "Please enter the correct username and password" in response.text

    response = log_in(client, "alice", "right-alice-password")

    assert not logged_in(response)
    assert THROTTLED in response.text
    assert "Try again in 15 minutes" in response.text
    # Also from another address, and whatever the case of the name.
    other = Client(REMOTE_ADDR="192.0.2.44")
    assert THROTTLED in log_in(other, "ALICE", "right-alice-password").text


@pytest.mark.django_db
def test_it_leaves_other_accounts_open(throttle) -> None:
    staff("alice")
    staff("bob")
    client = Client()
    for _ in range(6):
        log_in(client, "alice", "wrong")

    assert logged_in(log_in(client, "bob", "right-bob-password"))


@pytest.mark.django_db
def test_it_throttles_an_address_trying_many_accounts(throttle) -> None:
    staff("carol")
    client = Client()
    for n in range(12):
        assert not logged_in(log_in(client, f"user{n}", "wrong"))

    response = log_in(client, "carol", "right-carol-password")

    assert THROTTLED in response.text
    assert logged_in(
        log_in(Client(REMOTE_ADDR="192.0.2.44"), "carol", "right-carol-password")
    )


@pytest.mark.django_db
def test_a_login_clears_the_accounts_failures(throttle) -> None:
    staff("dave")
    client = Client()
    for _ in range(4):
        log_in(client, "dave", "wrong")
    assert logged_in(log_in(client, "dave", "right-dave-password"))

    client = Client()
    for _ in range(4):
        log_in(client, "dave", "wrong")
    assert logged_in(log_in(client, "dave", "right-dave-password"))


@pytest.mark.django_db
def test_it_logs_in_without_the_throttle_when_the_cache_is_down(
    throttle_settings, caplog
) -> None:
    staff("erin")
    throttle_settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": DEAD_REDIS_URL,
        }
    }

    with caplog.at_level(logging.WARNING, logger="chatsite.admin"):
        assert not logged_in(log_in(Client(), "erin", "wrong"))
        assert logged_in(log_in(Client(), "erin", "right-erin-password"))
    assert "admin login not throttled" in caplog.text


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


# --- Permissions-Policy ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/", "/api/health", "/admin/login/"])
async def test_it_denies_browser_features_the_pages_do_not_use(
    async_client: AsyncClient, url: str
) -> None:
    response = await async_client.get(url)

    policy = {item.strip() for item in response["Permissions-Policy"].split(",")}
    assert {"camera=()", "microphone=()", "geolocation=()", "payment=()"} <= policy
