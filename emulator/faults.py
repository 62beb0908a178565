"""Error replies: the service's JSON error body and the injectable HTTP faults.

The SDK reads `{"error": {"code", "message", "type", "param"}}` for every non-200
status; only `http_500_html` breaks that on purpose, as a misbehaving proxy would.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_HTML_500 = (
    "<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>"
    "<body><h1>Internal Server Error</h1></body></html>\n"
)


class ApiError(Exception):
    """Raised by handlers; the emulator middleware turns it into the reply."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        html: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}
        self.html = html

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "type": self.error_type,
                "param": None,
            }
        }

    def to_response(self) -> web.Response:
        if self.html:
            return web.Response(
                status=self.status,
                text=_HTML_500,
                content_type="text/html",
                headers=self.headers,
            )
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"No {kind} found with id '{ident}'.")


def bad_request(message: str, code: str = "invalid_request_error") -> ApiError:
    return ApiError(400, code, message)


def http_fault(fault: str, *, thread_id: str | None, retry_after: int) -> ApiError:
    """The error an injected HTTP fault answers with, worded like the service."""
    match fault:
        case "http_401":
            return ApiError(
                401,
                "unauthorized",
                "Access token is missing, invalid, audience is incorrect "
                "(https://ai.azure.com), or have expired.",
                error_type="authentication_error",
            )
        case "http_403":
            return ApiError(
                403,
                "PermissionDenied",
                "The principal lacks the required data action "
                "Microsoft.CognitiveServices/accounts/AIServices/agents/write.",
                error_type="permission_error",
            )
        case "http_404":
            return not_found("thread", thread_id or "thread_unknown")
        case "http_429":
            return ApiError(
                429,
                "rate_limit_exceeded",
                "Rate limit is exceeded. Try again later.",
                error_type="rate_limit_error",
            )
        case "http_429_retry_after":
            return ApiError(
                429,
                "rate_limit_exceeded",
                f"Rate limit is exceeded. Try again in {retry_after} seconds.",
                error_type="rate_limit_error",
                headers={"Retry-After": str(retry_after)},
            )
        case "http_500_json":
            return ApiError(
                500,
                "server_error",
                "The server had an error while processing your request.",
                error_type="server_error",
            )
        case "http_500_html":
            return ApiError(500, "server_error", "HTML error page", html=True)
    raise ValueError(f"{fault!r} is not an HTTP fault")
