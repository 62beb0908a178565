"""The JSON API's cross-cutting pieces: errors, body parsing, method dispatch,
authentication (session or API key) and CSRF for cookie-authenticated writes.

View bodies show only the HTTP contract; everything here is applied by decorators.
"""

import functools
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

Handler = Callable[..., Awaitable[HttpResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(
        orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def json_error(
    message: str,
    status: int,
    *,
    code: str | None = None,
    fields: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> HttpResponse:
    body: dict[str, Any] = {"error": message}
    if code:
        body["code"] = code
    if fields:
        body["fields"] = fields
    body.update(extra)
    return json_response(body, status=status, headers=headers)


class BadRequest(Exception):
    """Raised by helpers to answer 4xx with a JSON error from anywhere in a view."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        code: str | None = None,
        fields: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = fields
        self.headers = headers

    def response(self) -> HttpResponse:
        return json_error(
            self.message,
            self.status,
            code=self.code,
            fields=self.fields,
            headers=self.headers,
        )


def parse_json_object(request: HttpRequest) -> dict[str, Any]:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise BadRequest(
            "request body must be JSON (Content-Type: application/json)", 415
        )
    try:
        raw = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise BadRequest(f"request body is larger than {limit} bytes", 413) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def hash_api_key(raw_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough: there is nothing
    # to brute-force that a slow hash would protect.
    return hashlib.sha256(raw_key.encode()).hexdigest()


async def user_for_api_key(raw_key: str) -> User | None:
    from chatsite.models import ApiKey

    key = (
        await ApiKey.objects.active()
        .select_related("user")
        .filter(hashed_key=hash_api_key(raw_key))
        .afirst()
    )
    if key is None or not key.user.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=now)
    return key.user


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def csrf_failure(request: HttpRequest) -> str | None:
    """The reason a cookie-authenticated write fails Django's CSRF check, or None."""
    check = _CsrfCheck(lambda r: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})  # type: ignore[return-value]


async def authenticate(request: HttpRequest) -> None:
    """Sets `request.api_user` (a User or AnonymousUser) and `request.auth_method`.

    `Authorization: Bearer <key>` authenticates a script and needs no CSRF token:
    browsers never attach it on their own. A request that carries the session
    cookie is a browser acting with ambient authority, so its writes must pass
    Django's CSRF check. A request with neither is anonymous.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise BadRequest(
                "Authorization must be 'Bearer <API key>'",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        user = await user_for_api_key(raw_key.strip())
        if user is None:
            raise BadRequest(
                "invalid or revoked API key",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.api_user = user
        request.auth_method = "api_key"
        return
    if settings.SESSION_COOKIE_NAME in request.COOKIES:
        if request.method not in SAFE_METHODS:
            reason = csrf_failure(request)
            if reason:
                raise BadRequest(f"CSRF check failed: {reason}", 403, code="csrf")
        user = await request.auser()
        request.api_user = user
        request.auth_method = "session" if user.is_authenticated else "anonymous"
        return
    request.api_user = AnonymousUser()
    request.auth_method = "anonymous"


def api_view(
    *, public: bool = False, **handlers: Handler
) -> Callable[..., Awaitable[HttpResponse]]:
    """Builds one URL's view from per-method async handlers: `api_view(GET=…, POST=…)`.

    Answers 405 with `Allow` for other methods, authenticates the caller (unless
    `public`, for endpoints that must not touch the database) and turns
    `BadRequest` raised anywhere below into its JSON error.
    """
    allowed = sorted(
        {*handlers, "OPTIONS"} | ({"HEAD"} if "GET" in handlers else set())
    )

    @csrf_exempt
    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        if request.method == "OPTIONS":
            return HttpResponse(status=204, headers={"Allow": ", ".join(allowed)})
        handler = handlers.get(method or "")
        if handler is None:
            return json_error(
                f"method {request.method} is not allowed",
                405,
                headers={"Allow": ", ".join(allowed)},
            )
        try:
            if not public:
                await authenticate(request)
            return await handler(request, *args, **kwargs)
        except BadRequest as exc:
            return exc.response()

    view.allowed_methods = allowed  # type: ignore[attr-defined]
    return view


def require_permission(perm: str) -> Callable[[Handler], Handler]:
    """401 for anonymous callers, 403 for users without the model permission."""

    def decorator(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponse:
            user = request.api_user
            if not user.is_authenticated:
                raise BadRequest(
                    "authentication required: log in or send an API key",
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not await user.ahas_perm(perm):
                raise BadRequest(f"permission {perm} required", 403)
            return await handler(request, *args, **kwargs)

        return wrapper

    return decorator
