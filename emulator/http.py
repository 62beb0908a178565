"""What every route shares: JSON bodies, the error reply, SSE responses.

The SDKs read `{"error": {"code", "message", "type", "param"}}` for every non-200
status; only the `http_500_html` fault breaks that on purpose, as a misbehaving
proxy would.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, path, handler, operation): the operation is what faults aim at.
Route = tuple[str, str, Handler, str]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
# The content part types whose text a message carries, in the OpenAI protocols.
TEXT_TYPES = ("text", "input_text", "output_text")

# Set once a stream's headers are sent: an error can no longer become a reply.
STREAMING = web.RequestKey("emulator_streaming", bool)

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


def find[T](items: Mapping[str, T], ident: str, kind: str) -> T:
    """`items[ident]`, or the service's 404 for a `kind` of that id."""
    item = items.get(ident)
    if item is None:
        raise not_found(kind, ident)
    return item


def deleted(kind: str, ident: str) -> web.Response:
    """The reply to a successful DELETE of a `kind`."""
    return web.json_response(
        {"id": ident, "object": f"{kind}.deleted", "deleted": True}
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is `{}`."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    value = body.get("metadata") or {}
    if not isinstance(value, dict):
        raise bad_request("Invalid type for 'metadata': expected an object.")
    return value


def number(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"Invalid number: {value!r}.")
    return float(value)


def content_text(content: Any, types: Collection[str] = TEXT_TYPES) -> str:
    """Text of a message: a plain string or the text of its parts of `types`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in types
        )
    raise bad_request("Invalid type for 'content': expected a string or an array.")


def sse_frame(data: dict[str, Any] | str, event: str | None = None) -> str:
    """One SSE frame; a dict is sent as compact JSON, a string as it is."""
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n" if event else f"data: {data}\n\n"


async def open_stream(
    request: web.Request, *, close_after: bool = False
) -> web.StreamResponse:
    """Sends the headers of a chunked SSE reply.

    `close_after` closes the connection when the reply ends, so a client does not
    queue its next request behind a reply that goes on after its body ended.
    """
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    if close_after:
        response.force_close()
    await response.prepare(request)
    request[STREAMING] = True
    return response
