"""The openai client as the foundry and openai backends use it: its HTTP pool and
how its exceptions become stable errors.

Kept apart from `_errors` so that the azure_agents backend, which shares those
mappings but not this client, does not load the openai package.
"""

import httpx2
from azure.core.exceptions import ClientAuthenticationError
from django.conf import settings
from openai import APIConnectionError, APIError, APIStatusError, DefaultAsyncHttpxClient

from chat.backends._errors import stream_error
from chat.backends.base import (
    RATE_LIMITED,
    RUN_FAILED,
    UPSTREAM_AUTH,
    UPSTREAM_DISCONNECTED,
    UPSTREAM_UNAVAILABLE,
    BackendError,
)


def http_client() -> httpx2.AsyncClient:
    """An HTTP pool as large as the other backends' (CHAT_UPSTREAM_MAX_CONNECTIONS)."""
    limit = settings.CHAT_UPSTREAM_MAX_CONNECTIONS
    return DefaultAsyncHttpxClient(
        limits=httpx2.Limits(
            max_connections=limit, max_keepalive_connections=min(limit, 100)
        )
    )


def _retry_after(headers: httpx2.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def api_error(exc: BaseException, service: str) -> BackendError:
    """Turns an openai client exception raised before streaming into a stable
    error; anything else is re-raised."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return BackendError(
                UPSTREAM_AUTH, f"{service} refused our credentials (HTTP {status})"
            )
        if status == 429:
            return BackendError(
                RATE_LIMITED,
                f"{service} is rate limiting requests; try again shortly",
                retry_after=_retry_after(exc.response.headers),
            )
        if status >= 500:
            return BackendError(
                UPSTREAM_UNAVAILABLE, f"{service} failed (HTTP {status})"
            )
        detail = exc.body.get("message") if isinstance(exc.body, dict) else None
        return BackendError(
            RUN_FAILED,
            f"{service} rejected the request (HTTP {status}): {detail or exc.message}",
        )
    if isinstance(exc, APIConnectionError):
        return BackendError(UPSTREAM_UNAVAILABLE, f"could not reach {service}")
    if isinstance(exc, ClientAuthenticationError):
        return BackendError(UPSTREAM_AUTH, f"could not get a token: {exc.message}")
    raise exc


def stream_broke(exc: Exception, service: str) -> BackendError:
    """Maps what the openai client raises while iterating a stream."""
    if isinstance(exc, APIConnectionError):
        return BackendError(
            UPSTREAM_DISCONNECTED, f"the connection to {service} was cut"
        )
    if isinstance(exc, APIError):
        # A `{"error": ...}` object in the stream.
        return stream_error(exc.code, exc.message, service=service, default=RUN_FAILED)
    raise exc
