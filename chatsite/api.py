"""The JSON API's cross-cutting pieces: errors, body parsing and validation, method
dispatch, authentication (session or API key) and CSRF for cookie-authenticated
writes.

View bodies show only the HTTP contract; everything here is applied by decorators.
"""

import functools
import hashlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

Handler = Callable[..., Awaitable[HttpResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INVALID_FIELDS = "invalid fields"
# NUL as a regex escape that JSON Schema (ECMA-262) and Python read alike.
NUL = "\\u0000"
# What a client is told for pydantic's own errors; `Text` words its own.
ERROR_MESSAGES = {
    "missing": "this field is required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
}


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


def parse_json_object(
    request: HttpRequest, *, text_plain: bool = False
) -> dict[str, Any]:
    """The request's body, a JSON object. With `text_plain`, a body sent as
    `text/plain` (what fetch() sends for a string body) is read as JSON too."""
    content_type = request.content_type or ""
    if content_type != "application/json" and not (
        text_plain and content_type == "text/plain"
    ):
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


class JsonBody(BaseModel):
    """The shape of a JSON request body, the one definition that validates it
    (`validate`, `parse_body`) and documents it (the OpenAPI components).

    Types are strict, as JSON has them (no "1" for 1, no 1 for true), and unknown
    keys are refused. A refusal is a 400 `{"error": "invalid fields", "fields":
    {name: [message, ...]}}`; a body sets `first_problem_only` to answer with its
    first problem alone, as the `error` and the one field, and `error_code` to add
    a `code`. `error_message` words each problem.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    error_code: ClassVar[str | None] = None
    first_problem_only: ClassVar[bool] = False

    @classmethod
    def error_message(cls, error: ErrorDetails) -> str:
        return ERROR_MESSAGES.get(error["type"], error["msg"])


def validate[Body: JsonBody](data: dict[str, Any], model: type[Body]) -> Body:
    """`data` as a `model`, or BadRequest (400) with what is wrong, by field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _refusal(model, exc) from None


def parse_body[Body: JsonBody](
    request: HttpRequest, model: type[Body], *, text_plain: bool = False
) -> Body:
    """The request's JSON object as a `model`: `parse_json_object`, then `validate`."""
    return validate(parse_json_object(request, text_plain=text_plain), model)


def _refusal(model: type[JsonBody], exc: ValidationError) -> BadRequest:
    fields: dict[str, list[str]] = {}
    for error in sorted(exc.errors(include_url=False), key=_unknown_keys_first):
        name = str(error["loc"][0]) if error["loc"] else NON_FIELD_ERRORS
        fields.setdefault(name, []).append(model.error_message(error))
    if model.first_problem_only:
        name, (message, *_) = next(iter(fields.items()))
        return BadRequest(message, code=model.error_code, fields={name: [message]})
    return BadRequest(INVALID_FIELDS, code=model.error_code, fields=fields)


def _unknown_keys_first(error: ErrorDetails) -> tuple[bool, str]:
    # Then the model's fields in their order (sorting is stable).
    if error["type"] == "extra_forbidden":
        return False, str(error["loc"][0])
    return True, ""


@dataclass(frozen=True, slots=True)
class Text:
    """The rules for a JSON string, `Annotated[str, Text(...)]`, which validate it
    and give its JSON Schema alike.

    NUL is always refused: PostgreSQL text cannot hold it. With `strip` the value
    is kept stripped (str.strip()) and the lengths count what is left; `needs_text`
    asks for more than whitespace; `max_length` may be a callable, read when
    validating (a setting). `enforce_limits=False` documents the lengths without
    checking them, for a model field whose full_clean() checks them. (A stripped
    Text takes a min_length of 0 or 1 and a max_length of at least 2.)

    The schema is one `pattern` that accepts exactly the strings validation
    accepts, with minLength/maxLength where nothing is stripped.
    """

    strip: bool = False
    needs_text: bool = False
    min_length: int = 0
    max_length: int | Callable[[], int] | None = None
    enforce_limits: bool = True

    def limit(self) -> int | None:
        return self.max_length() if callable(self.max_length) else self.max_length

    def clean(self, value: str) -> str:
        if self.strip:
            value = value.strip()
        enforce = self.enforce_limits
        if enforce and self.needs_text and not value.strip():
            raise PydanticCustomError("blank", "must not be blank")
        if enforce and len(value) < self.min_length:
            raise PydanticCustomError(
                "too_short",
                "is shorter than {min_length} characters",
                {"min_length": self.min_length},
            )
        if "\x00" in value:
            raise PydanticCustomError("nul", "must not contain NUL characters")
        limit = self.limit() if enforce else None
        if limit is not None and len(value) > limit:
            raise PydanticCustomError(
                "too_long",
                "is longer than {max_length} characters",
                {"max_length": limit},
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.clean, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        limit = self.limit()
        if self.strip:
            json_schema["pattern"] = self._stripped_pattern(limit)
            return json_schema
        json_schema["pattern"] = (
            f"^[^{NUL}]*[^{NUL}{_spaces()}][^{NUL}]*$"
            if self.needs_text
            else f"^[^{NUL}]*$"
        )
        if self.min_length:
            json_schema["minLength"] = self.min_length
        if limit is not None:
            json_schema["maxLength"] = limit
        return json_schema

    def _stripped_pattern(self, limit: int | None) -> str:
        # Whitespace around up to `limit` characters that start and end with one
        # strip() keeps.
        space = _spaces()
        kept = f"[^{NUL}{space}]"
        between = "*" if limit is None else f"{{0,{limit - 2}}}"
        text = f"{kept}([^{NUL}]{between}{kept})?"
        if not self.min_length:
            text = f"({text})?"
        return f"^[{space}]*{text}[{space}]*$"


@functools.cache
def _spaces() -> str:
    """What str.strip() removes, as the inside of a regex character class."""
    # No character beyond the BMP is whitespace.
    codes = [code for code in range(0x10000) if chr(code).isspace()]
    runs = itertools.groupby(enumerate(codes), lambda pair: pair[1] - pair[0])
    ranges = []
    for _, run in runs:
        first, *rest = [code for _, code in run]
        last = rest[-1] if rest else first
        ranges.append(f"\\u{first:04x}" + (f"-\\u{last:04x}" if last != first else ""))
    return "".join(ranges)


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
    cookie, or that the Container Apps ingress signed in (its cookie is just as
    ambient), is a browser acting with ambient authority, so its writes must pass
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
    signed_in = getattr(request, "principal", None) is not None
    if signed_in or settings.SESSION_COOKIE_NAME in request.COOKIES:
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
