"""Upstream failures every backend reports alike, as stable `BackendError`s.

Nothing here imports an SDK: each backend maps its own client's exceptions and
passes the codes and messages they carry to these functions.
"""

import re

from chat.backends.base import (
    INCOMPLETE,
    RATE_LIMITED,
    UPSTREAM_UNAVAILABLE,
    BackendError,
)

RETRY_IN = re.compile(r"(?:try again|retry) in (\d+(?:\.\d+)?) ?s", re.IGNORECASE)
SERVER_ERROR_CODES = frozenset(
    {"server_error", "internal_error", "internal_server_error", "service_unavailable"}
)
# Why a reply stopped early, by finish_reason or Responses incomplete reason.
INCOMPLETE_REASONS = {
    "length": "the reply reached the model's output token limit",
    "max_output_tokens": "the reply reached the model's output token limit",
    "content_filter": "the content filter stopped the reply",
}


def model_rate_limited(message: str) -> BackendError:
    """A run that failed on the model's rate limit; its message says when to retry
    ("Try again in 20 seconds")."""
    match = RETRY_IN.search(message)
    return BackendError(
        RATE_LIMITED,
        message or "the agent's model is rate limited",
        retry_after=float(match.group(1)) if match else None,
    )


def stream_error(
    code: str | None, message: str | None, *, service: str, default: str
) -> BackendError:
    """An error the service reported inside a stream, by its code."""
    message = message or "no details"
    if code == "rate_limit_exceeded":
        return model_rate_limited(message)
    if code in SERVER_ERROR_CODES:
        default = UPSTREAM_UNAVAILABLE
    return BackendError(default, f"{service} reported an error: {code}: {message}")


def incomplete(reason: str | None) -> BackendError:
    message = INCOMPLETE_REASONS.get(reason or "")
    return BackendError(INCOMPLETE, message or f"the reply stopped early ({reason})")
