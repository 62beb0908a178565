import socket

import pytest
from django.test import AsyncClient

REDIS = ("127.0.0.1", 6379)
# Nothing listens on port 1, so connecting is refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def use_redis(settings, url: str) -> None:
    # CACHES is built from REDIS_URL at startup; the readiness check reads both.
    settings.REDIS_URL = url
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "chatsite-tests",
        }
    }


def redis_is_running() -> bool:
    try:
        socket.create_connection(REDIS, timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("path", ["/api/health", "/api/health/"])
async def test_it_reports_health(async_client: AsyncClient, settings, path) -> None:
    response = await async_client.get(path)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "status": "healthy",
        "service": "chatsite",
        "version": settings.VERSION,
    }


async def test_it_reports_health_without_touching_the_database(
    async_client: AsyncClient, django_db_blocker
) -> None:
    # Credentials are ignored: liveness must not depend on the database.
    async_client.cookies["sessionid"] = "a-session-that-would-need-a-lookup"

    with django_db_blocker.block():
        response = await async_client.get(
            "/api/health", headers={"Authorization": "Bearer cs_not-a-key"}
        )

    assert response.status_code == 200


async def test_it_answers_head_and_options(async_client: AsyncClient) -> None:
    head = await async_client.head("/api/health")
    options = await async_client.options("/api/health")

    assert head.status_code == 200
    assert options.status_code == 204
    assert options["Allow"] == "GET, HEAD, OPTIONS"


async def test_it_refuses_other_methods(async_client: AsyncClient) -> None:
    response = await async_client.post("/api/health")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/health/ready", "/api/health/ready/"])
async def test_it_reports_ready_with_each_check(
    async_client: AsyncClient, settings, path: str
) -> None:
    settings.REDIS_URL = ""

    response = await async_client.get(path)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert "failed" not in body
    assert set(body["checks"]) == {"database", "chat_backend"}
    for result in body["checks"].values():
        assert result["ok"] is True
        assert result["ms"] >= 0


@pytest.mark.django_db
@pytest.mark.skipif(not redis_is_running(), reason="no Redis on 127.0.0.1:6379")
async def test_it_checks_a_configured_redis(
    async_client: AsyncClient, settings
) -> None:
    use_redis(settings, "redis://127.0.0.1:6379/15")

    response = await async_client.get("/api/health/ready")

    assert response.status_code == 200
    assert response.json()["checks"]["cache"]["ok"] is True


@pytest.mark.django_db
async def test_it_names_a_failed_cache(async_client: AsyncClient, settings) -> None:
    use_redis(settings, DEAD_REDIS_URL)

    response = await async_client.get("/api/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["cache"]
    assert body["checks"]["cache"] == {"ok": False}
    assert body["checks"]["database"]["ok"] is True


async def test_it_names_a_failed_database(
    async_client: AsyncClient, settings, django_db_blocker
) -> None:
    settings.REDIS_URL = ""

    # pytest-django's blocker fails every connection attempt, as an outage would.
    with django_db_blocker.block():
        response = await async_client.get("/api/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"]["database"] == {"ok": False}
    assert body["checks"]["chat_backend"]["ok"] is True


@pytest.mark.django_db
async def test_it_names_a_misconfigured_chat_backend(
    async_client: AsyncClient, settings
) -> None:
    settings.REDIS_URL = ""
    settings.CHAT_BACKEND = "chat.backends.no_such_module.Backend"

    response = await async_client.get("/api/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["chat_backend"]
    assert body["checks"]["chat_backend"] == {"ok": False}


async def test_it_names_every_failed_check(
    async_client: AsyncClient, settings, django_db_blocker
) -> None:
    use_redis(settings, DEAD_REDIS_URL)

    with django_db_blocker.block():
        response = await async_client.get("/api/health/ready")

    assert response.status_code == 503
    assert response.json()["failed"] == ["database", "cache"]
