"""Fields for the current request's log line, carried in a context variable.

The request-log middleware opens a fresh set per request; code anywhere below it
(the chat relay, for one) adds to it with `annotate`, without the request or a
dict being handed down. Outside a request `annotate` does nothing.
"""

from contextvars import ContextVar
from typing import Any

_fields: ContextVar[dict[str, Any] | None] = ContextVar("log_fields", default=None)


def begin() -> dict[str, Any]:
    """Starts the current request's fields and returns them for its log line."""
    fields: dict[str, Any] = {}
    _fields.set(fields)
    return fields


def annotate(**fields: Any) -> None:
    current = _fields.get()
    if current is not None:
        current.update(fields)
