import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from chatsite.api import api_view, json_error, json_response
from chatsite.openapi import openapi_document

logger = logging.getLogger(__name__)


async def get_health(request: HttpRequest) -> HttpResponse:
    # Liveness only: touches nothing, so a slow database never restarts replicas.
    return json_response(
        {"status": "healthy", "service": "chatsite", "version": settings.VERSION}
    )


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _check_cache() -> None:
    key = "health:ready"
    await cache.aset(key, "ok", 10)
    if await cache.aget(key) != "ok":
        raise RuntimeError("cache did not return the value just written")


async def _check_chat_backend() -> None:
    from chat.backends import get_backend

    problems = get_backend().configuration_problems()
    if problems:
        raise RuntimeError("; ".join(problems))


async def _run_check(name: str, check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await check()
    except Exception as exc:
        # The endpoint is public: why a check failed goes to the log only.
        logger.warning(
            "readiness check %s failed: %s: %s", name, type(exc).__name__, exc
        )
        return {"ok": False}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


async def get_ready(request: HttpRequest) -> HttpResponse:
    checks = {"database": sync_to_async(_check_database)}
    if settings.REDIS_URL:
        checks["cache"] = _check_cache
    checks["chat_backend"] = _check_chat_backend
    results = {name: await _run_check(name, check) for name, check in checks.items()}
    failed = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "unavailable" if failed else "ready", "checks": results}
    if failed:
        body["failed"] = failed
    return json_response(body, status=503 if failed else 200)


async def get_openapi(request: HttpRequest) -> HttpResponse:
    return json_response(openapi_document())


health = api_view(GET=get_health, public=True)
ready = api_view(GET=get_ready, public=True)
openapi = api_view(GET=get_openapi, public=True)


@csrf_exempt
async def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Every path under /api/ that no route takes: JSON, in every mode (Django's
    debug 404 page would answer otherwise)."""
    return json_error("not found", 404, code="not_found")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return json_error("not found", 404, code="not_found")
    from django.views.defaults import page_not_found as html_page_not_found

    return html_page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return json_response({"error": "internal server error"}, status=500)
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)
