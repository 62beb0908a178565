"""Injected HTTP faults: whether one hits a call, and the error it answers with.

Stream faults strike inside a reply, in `stream.PacedReply`.
"""

from __future__ import annotations

from .config import HTTP_FAULTS, EmulatorConfig
from .http import ApiError, not_found


def check_http_fault(
    config: EmulatorConfig, operation: str, missing: tuple[str, str]
) -> None:
    """Raises the HTTP fault `config` aims at `operation`, if any.

    `missing` is the (kind, id) an http_404 says it could not find.
    """
    if config.fault in HTTP_FAULTS and config.aims_at(operation):
        raise http_fault(config.fault, missing=missing, retry_after=config.retry_after)


def http_fault(fault: str, *, missing: tuple[str, str], retry_after: int) -> ApiError:
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
            return not_found(*missing)
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
