import inspect
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient
from django.urls import path
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string


async def remember(request: HttpRequest) -> HttpResponse:
    await request.session.aset("colour", request.GET.get("colour", "blue"))
    return HttpResponse("remembered", status=int(request.GET.get("status", 200)))


async def recall(request: HttpRequest) -> HttpResponse:
    return HttpResponse(await request.session.aget("colour", "nothing"))


async def forget(request: HttpRequest) -> HttpResponse:
    await request.session.aflush()
    return HttpResponse("forgotten")


# A URLconf of async views that use the session, for `uses_session_views`.
urlpatterns = [
    path("remember", remember),
    path("recall", recall),
    path("forget", forget),
]


def uses_session_views(test: Callable[..., Any]) -> Callable[..., Any]:
    """Runs `test` on this URLconf with committed rows: the async views query the
    database on another thread's connection, which sees nothing uncommitted."""
    return pytest.mark.urls(__name__)(pytest.mark.django_db(transaction=True)(test))


def middleware_classes() -> list[type]:
    return [import_string(dotted) for dotted in settings.MIDDLEWARE]


@pytest.mark.parametrize("dotted", settings.MIDDLEWARE)
def test_it_runs_only_async_capable_middleware(dotted: str) -> None:
    middleware = import_string(dotted)

    assert middleware.async_capable
    if issubclass(middleware, MiddlewareMixin):
        # MiddlewareMixin's own __acall__ runs each hook in a thread.
        assert middleware.__acall__ is not MiddlewareMixin.__acall__
    if hasattr(middleware, "process_view"):
        # Django wraps a sync process_view in sync_to_async under ASGI.
        assert inspect.iscoroutinefunction(middleware.process_view)


async def test_it_runs_every_hook_on_the_event_loop_thread(
    async_client: AsyncClient, monkeypatch
) -> None:
    threads: dict[str, int] = {}

    def recording(name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(hook):

            async def record_async(self, *args: Any) -> Any:
                threads[name] = threading.get_ident()
                return await hook(self, *args)

            return record_async

        def record(self, *args: Any) -> Any:
            threads[name] = threading.get_ident()
            return hook(self, *args)

        return record

    for middleware in middleware_classes():
        for hook in ("process_request", "process_view", "process_response"):
            if hasattr(middleware, hook):
                name = f"{middleware.__name__}.{hook}"
                monkeypatch.setattr(
                    middleware, hook, recording(name, getattr(middleware, hook))
                )

    response = await async_client.get("/api/health")

    assert response.status_code == 200
    assert "CsrfViewMiddleware.process_view" in threads
    assert "SessionMiddleware.process_response" in threads
    assert len(threads) >= 10
    assert set(threads.values()) == {threading.get_ident()}, threads


async def test_it_sends_the_security_headers(async_client: AsyncClient) -> None:
    response = await async_client.get("/api/health")

    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response["Content-Security-Policy"]


@uses_session_views
async def test_it_saves_a_session_written_by_an_async_view(
    async_client: AsyncClient,
) -> None:
    response = await async_client.get("/remember")

    assert response.status_code == 200
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert cookie["secure"]
    assert "Cookie" in response["Vary"]
    stored = await SessionStore(session_key=cookie.value).aload()
    assert stored == {"colour": "blue"}


@uses_session_views
async def test_it_reads_the_session_back(async_client: AsyncClient) -> None:
    await async_client.get("/remember", {"colour": "green"})

    response = await async_client.get("/recall")

    assert response.content == b"green"
    # Reading alone neither saves the session nor sends the cookie again.
    assert settings.SESSION_COOKIE_NAME not in response.cookies


@uses_session_views
async def test_it_updates_a_session_in_place(async_client: AsyncClient) -> None:
    first = await async_client.get("/remember", {"colour": "green"})
    second = await async_client.get("/remember", {"colour": "red"})

    key = first.cookies[settings.SESSION_COOKIE_NAME].value
    assert second.cookies[settings.SESSION_COOKIE_NAME].value == key
    assert await SessionStore(session_key=key).aload() == {"colour": "red"}


@uses_session_views
async def test_it_does_not_save_a_session_on_a_server_error(
    async_client: AsyncClient,
) -> None:
    from django.contrib.sessions.models import Session

    response = await async_client.get("/remember", {"status": 500})

    assert response.status_code == 500
    assert settings.SESSION_COOKIE_NAME not in response.cookies
    assert await Session.objects.acount() == 0


@uses_session_views
async def test_it_deletes_the_cookie_of_an_emptied_session(
    async_client: AsyncClient,
) -> None:
    remembered = await async_client.get("/remember")
    key = remembered.cookies[settings.SESSION_COOKIE_NAME].value

    response = await async_client.get("/forget")

    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie.value == ""
    assert cookie["max-age"] == 0
    assert not await SessionStore(session_key=key).aexists(key)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("page", ["/", "/admin/login/"])
async def test_it_sets_the_csrf_cookie_on_pages(
    async_client: AsyncClient, page: str
) -> None:
    response = await async_client.get(page)

    assert response.status_code == 200
    cookie = response.cookies[settings.CSRF_COOKIE_NAME]
    assert len(cookie.value) == 32
    assert cookie["samesite"] == "Lax"
    assert cookie["secure"]


async def test_it_sets_no_csrf_cookie_on_api_responses(
    async_client: AsyncClient,
) -> None:
    response = await async_client.get("/api/health")

    assert settings.CSRF_COOKIE_NAME not in response.cookies


@pytest.mark.django_db(transaction=True)
async def test_it_still_checks_csrf_on_forms() -> None:
    client = AsyncClient(enforce_csrf_checks=True)

    refused = await client.post(
        "/admin/login/", {"username": "nobody", "password": "wrong"}
    )
    page = await client.get("/admin/login/")
    token = page.context["csrf_token"]
    checked = await client.post(
        "/admin/login/",
        {"username": "nobody", "password": "wrong", "csrfmiddlewaretoken": token},
    )

    assert refused.status_code == 403
    assert checked.status_code == 200  # the form again, with "wrong password"
