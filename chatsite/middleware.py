"""Django's own middleware, run on the event loop instead of in a thread.

Under ASGI every hook of a `MiddlewareMixin` is wrapped in `sync_to_async`: one
thread hop per hook and per request, the chat stream included. The hooks wrapped
here only read and write headers, cookies and lazy request attributes (no I/O),
so they run inline; the one hook that does I/O, saving the session, is awaited
through the session's async API.
"""

import functools
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as session_middleware
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, csp, csrf, security
from opentelemetry import metrics
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatsite import easyauth, ids, requestlog
from chatsite.api import json_error
from chatsite.responses import EventStreamResponse


class InlineHooksMixin:
    """Replaces `MiddlewareMixin.__acall__` with one that does not hop threads."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    """Django's, plus the `Permissions-Policy` header (PERMISSIONS_POLICY)."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        response = super().process_response(request, response)
        if settings.PERMISSIONS_POLICY:
            response.headers.setdefault(
                "Permissions-Policy", settings.PERMISSIONS_POLICY
            )
        return response


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    async def process_view(
        self,
        request: HttpRequest,
        callback: Any,
        callback_args: Any,
        callback_kwargs: Any,
    ) -> HttpResponseBase | None:
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(
    InlineHooksMixin, auth_middleware.AuthenticationMiddleware
):
    pass


class MessageMiddleware(InlineHooksMixin, messages_middleware.MessageMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class ContentSecurityPolicyMiddleware(
    InlineHooksMixin, csp.ContentSecurityPolicyMiddleware
):
    pass


class SessionMiddleware(session_middleware.SessionMiddleware):
    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        response = await self.get_response(request)
        session = request.session
        must_save = (
            session.modified or settings.SESSION_SAVE_EVERY_REQUEST
        ) and not session.is_empty()
        if must_save and response.status_code < 500:
            try:
                await session.asave()
            except UpdateError:
                raise SessionInterrupted(
                    "The request's session was deleted before the request completed."
                ) from None
            # The data is saved; process_response only has to set the cookie.
            session.save = _already_saved
        return self.process_response(request, response)


def _already_saved(must_create: bool = False) -> None:
    return None


class AsyncMiddleware:
    """A middleware that runs only on the event loop (no sync mode to adapt to)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return await self.get_response(request)


class EasyAuthMiddleware(AsyncMiddleware):
    """With AUTH_EASY_AUTH, signs in the user that the Container Apps ingress
    signed in, from its principal headers (chatsite.easyauth), and sets
    `request.principal`. A principal that cannot be read is refused with 401, one
    that is not let in with 403: JSON under /api/, a page elsewhere, never a 500.
    With the setting off the headers are ignored and `request.principal` is None.
    """

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.principal = None
        if settings.AUTH_EASY_AUTH:
            try:
                request.principal = await easyauth.sign_in(request)
            except easyauth.SignInRefused as refused:
                return easyauth.refusal(request, refused)
        return await self.get_response(request)


REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_logger = logging.getLogger("chatsite.request")


class RequestLogMiddleware(AsyncMiddleware):
    """One structured log line per request, with a request id (also sent back in
    `X-Request-ID`). Streaming responses are logged when the stream ends, with
    what was added with `requestlog.annotate` (time to first chunk, chunk count).
    Never logs bodies, message content, tokens or secrets."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if REQUEST_ID.match(incoming) else ids.hex_id()
        fields = requestlog.begin()
        response = await self.get_response(request)
        response["X-Request-ID"] = request.request_id
        # What the line needs, not the request: a stream outlives its use.
        seen = (request.method or "", request.path, request.request_id)
        status = response.status_code
        if isinstance(response, EventStreamResponse):
            # Logged when the server closes it, with no layer around its body.
            response.on_close(
                functools.partial(self._log, seen, status, started, fields)
            )
        elif response.streaming and response.is_async:
            response.streaming_content = self._logged(
                seen, status, started, fields, response.streaming_content
            )
        else:
            self._log(seen, status, started, fields)
        return response

    async def _logged(
        self,
        seen: tuple[str, str, str],
        status: int,
        started: float,
        fields: dict[str, Any],
        content: AsyncIterator[bytes],
    ) -> AsyncIterator[bytes]:
        try:
            async for part in content:
                yield part
        finally:
            self._log(seen, status, started, fields)

    def _log(
        self,
        seen: tuple[str, str, str],
        status: int,
        started: float,
        fields: dict[str, Any],
    ) -> None:
        method, path, request_id = seen
        access_logger.info(
            "%s %s %s",
            method,
            path,
            status,
            extra={
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                **fields,
            },
        )


class ClientAddressMiddleware(AsyncMiddleware):
    """Sets `REMOTE_ADDR` to the client's address behind TRUSTED_PROXY_HOPS proxies.

    Each proxy appends the address it was connected from to X-Forwarded-For; the
    client can write anything before those. So the client is the entry that the
    outermost trusted proxy appended, the hops-th from the right. With no hops, or
    fewer entries than hops (a request that did not pass them all), the connecting
    address stays.
    """

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        hops = settings.TRUSTED_PROXY_HOPS
        if hops:
            entries = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            address = _ip_address(entries[-hops]) if len(entries) >= hops else None
            if address:
                request.META["REMOTE_ADDR"] = address
        return await self.get_response(request)


def _ip_address(entry: str) -> str | None:
    """The address in an X-Forwarded-For entry: `a.b.c.d`, `a.b.c.d:port`, an
    IPv6 address, or `[v6]:port`."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


class AllowedHostsMiddleware(AsyncMiddleware):
    """Checks the Host header against ALLOWED_HOSTS on every request: Django does
    it only when something calls `get_host()`, which most views never do.
    `DisallowedHost` becomes Django's 400."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.get_host()
        return await self.get_response(request)


CACHE_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
logger = logging.getLogger(__name__)
# A no-op unless telemetry is configured (chatsite/telemetry.py).
cache_outages = metrics.get_meter(__name__).create_counter(
    "chatsite.cache_unreachable",
    description="Requests refused because the shared cache could not be reached",
)


class CacheOutageMiddleware(AsyncMiddleware):
    """Requests that need the shared cache (Redis: chat limits, Idempotency-Keys,
    process leases) fail closed while it cannot be reached: an API request answers
    503 `{"error": ..., "code": "unavailable"}` with Retry-After, never a bare
    500. Each is logged and counted."""

    async def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if not isinstance(exception, CACHE_UNREACHABLE):
            return None
        logger.warning(
            "cache unreachable: %s %s: %s", request.method, request.path, exception
        )
        cache_outages.add(1)
        if not request.path.startswith("/api/"):
            return None
        return json_error(
            "a service the request needs is unavailable; try again shortly",
            503,
            code="unavailable",
            headers={"Retry-After": "5"},
        )
