"""ASGI entry point: `uvicorn chatsite.asgi:application`.

Threads. Django's handler runs every request in its own `ThreadSensitiveContext`,
which creates a fresh OS thread for the request's sync work (the database
receivers of `request_started`, every async ORM call) and keeps it until the
response ends — for a chat stream, its whole life: 1,000 open streams, 1,000
threads. Here each request instead enters a context bound to one of a few
long-lived single-thread executors (asgiref's `ThreadSensitiveContext(executor=)`),
so sync work keeps thread affinity within a request while the thread count stays
fixed. Requests that share a thread also share its database connection between
their hops; that is safe because a transaction never spans a hop (Django's
`atomic` is sync-only) and connections are not persistent (`CONN_MAX_AGE=0`).

Request limits. Django reads a whole request body, into a temporary file past
FILE_UPLOAD_MAX_MEMORY_SIZE, before any view can refuse it. The handler counts the
body as it arrives instead and answers 413 at DATA_UPLOAD_MAX_MEMORY_SIZE (at once
for a declared Content-Length over it). The size of the request head is bounded by
uvicorn (`--h11-max-incomplete-event-size`); the number of headers here (431).

Shutdown. Django has no ASGI lifespan support. Without it, uvicorn's graceful shutdown
cancels in-flight streams and re-raises SIGTERM before their cleanup runs, and the
partial replies are lost. The handler answers lifespan messages too and, on
shutdown, stops open chat streams and waits for them to store what they have.
"""

import asyncio
import io
import os
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import aclosing, closing
from typing import Any

import django
import orjson
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django import db
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpRequest
from django.http.response import HttpResponseBase, ResponseHeaders
from django.urls import set_script_prefix

from chatsite import telemetry, threads
from chatsite.responses import EventStreamResponse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class SharedThreadsASGIHandler(ASGIHandler):
    """Django's ASGI handler with a fixed set of threads for sync work, no
    garbage cycle per request, the request limits and the lifespan.

    It is the whole application, with no layer of its own around it: what sits
    between the server and a response lives as long as the response, and a chat
    stream lasts minutes (a layer is a coroutine, a receive wrapper a closure and
    a coroutine more: the two were 1.3 KiB of each open stream)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        global _turnover
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle HTTP connections, not {scope['type']}"
            )
        _turnover += 1
        try:
            if len(scope["headers"]) > MAX_REQUEST_HEADERS:
                await _refuse(send, 431, "too many request headers", "too_many_headers")
                return
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            if limit is not None and _content_length(scope) > limit:
                await _refuse(send, 413, _too_large(limit), "too_large")
                return
            async with ThreadSensitiveContext(executor=threads.next_executor()):
                await self.handle(scope, receive, send)
        finally:
            _turnover += 1

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Django's `handle`, the same contract: the response is served while a
        task listens for the client's disconnect, which cancels it.

        Django's own defines an exception class per request and ends each one by
        raising it through an `asyncio.TaskGroup`: the class, the exception
        group, its tracebacks and their frames (holding the request and the
        response) form a reference cycle that only a full collection frees.
        Under load that is megabytes a minute and long collector pauses. Here the
        listener cancels the serving task directly, and nothing is left in a
        cycle."""
        try:
            body_file = await self.read_body(_counting(receive, send))
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            if signals.request_started.receivers:
                await signals.request_started.asend(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                body_file.close()
                await self.send_response(error_response, send)
                await sync_to_async(error_response.close)()
                return
            response = await self._serve(request, body_file, receive, send)
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await sync_to_async(response.close)()
            # The request is done with: what middleware hung on it (the lazy
            # user, the messages storage, the session) points back at it.
            request.__dict__.clear()

    async def read_body(self, receive: Receive) -> Any:
        """Django's, but a body that comes whole in one message, as an API
        call's does, is read from the bytes that came rather than copied into a
        temporary file object (0.6 KiB, held as long as a stream's request)."""
        message = await receive()
        body = message.get("body", b"")
        if (
            message["type"] == "http.request"
            and not message.get("more_body", False)
            and len(body) <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE
        ):
            return io.BytesIO(body)
        return await super().read_body(_replaying(message, receive))

    async def _serve(
        self, request: HttpRequest, body_file: Any, receive: Receive, send: Send
    ) -> HttpResponseBase | None:
        """The response, once sent; None if the client left first."""
        serving = asyncio.current_task()
        assert serving is not None
        listener = asyncio.create_task(_cancel_on_disconnect(receive, serving))
        response = None
        try:
            response = await self.run_get_response(request)
            if response.streaming:
                # The view and every middleware are done with the request: a
                # stream that lasts minutes holds only its response.
                body_file.close()
                request.__dict__.clear()
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not _cancelled_serving(listener):
                raise
            serving.uncancel()
        except RequestAborted:
            pass
        finally:
            listener.cancel()
        if _cancelled_serving(listener):
            listener.result()  # an unexpected message: its AssertionError
        return response

    async def send_response(self, response: HttpResponseBase, send: Send) -> None:
        """Django's, but an event stream's items go out as they are: Django maps
        every item of a streaming response through a generator of its own and
        splits it again into chunks, a generator more per event."""
        if not isinstance(response, EventStreamResponse):
            await super().send_response(response, send)
            return
        await send(_response_start(response))
        # Sent: a stream that lasts minutes holds only its body, not its dozen
        # headers (1.5 KiB).
        response.headers = ResponseHeaders({})
        async with aclosing(response.events) as events:
            async for part in events:
                await send(
                    {"type": "http.response.body", "body": part, "more_body": True}
                )
        await send({"type": "http.response.body"})


def _response_start(response: HttpResponseBase) -> dict[str, Any]:
    """The `http.response.start` message, as Django builds it (the headers in
    their case, then the cookies)."""
    headers = [
        (header.encode("ascii"), value.encode("latin1"))
        for header, value in response.items()
    ]
    headers += [
        (b"Set-Cookie", cookie.OutputString().encode("ascii"))
        for cookie in response.cookies.values()
    ]
    return {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": headers,
    }


# Browsers send about 20; proxies add about 10.
MAX_REQUEST_HEADERS = 100


async def _cancel_on_disconnect(receive: Receive, serving: asyncio.Task[Any]) -> None:
    """Django's `listen_for_disconnect`, cancelling the task that serves the
    request when the client leaves (a callback on the listener was a closure
    more, for every open stream's life)."""
    message = await receive()
    serving.cancel()
    if message["type"] != "http.disconnect":
        # This should never happen.
        raise AssertionError(
            "Invalid ASGI message after request body: " + message["type"]
        )


def _cancelled_serving(listener: asyncio.Task[None]) -> bool:
    """The listener heard from the client, and so cancelled the serving task."""
    return listener.done() and not listener.cancelled()


def _counting(receive: Receive, send: Send) -> Receive:
    """`receive` for reading the body: past DATA_UPLOAD_MAX_MEMORY_SIZE bytes it
    answers 413 and the reader sees the client disconnect (the connection is
    then closed). A declared Content-Length over the limit was refused before."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return receive
    received = 0

    async def counting_receive() -> MutableMapping[str, Any]:
        nonlocal received
        if received > limit:
            return {"type": "http.disconnect"}
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            await _refuse(send, 413, _too_large(limit), "too_large")
            return {"type": "http.disconnect"}
        return message

    return counting_receive


def _replaying(first: MutableMapping[str, Any], receive: Receive) -> Receive:
    """`receive`, whose first message is `first` (already received)."""
    pending: list[MutableMapping[str, Any]] = [first]

    async def replaying_receive() -> MutableMapping[str, Any]:
        return pending.pop() if pending else await receive()

    return replaying_receive


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = orjson.dumps({"error": message, "code": code})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


django.setup(set_prefix=False)


def _no_thread_hop_at_request_start() -> None:
    """Django's database receivers of `request_started` (`reset_queries`,
    `close_old_connections`) are sync, so sending the signal hops to the
    request's thread and back. Here that thread is one of a few shared ones,
    which other requests use between this one's hops: what the receivers close
    or clear there is closed or cleared when a request finishes
    (`request_finished` keeps `close_old_connections`, and gets
    `reset_queries`). Each hop waits for the GIL: in a burst of new chats these
    hops queued on the shared threads ahead of the turns' writes (bursts of 100
    one-token chats, alternated runs: TTFC p50 204-213 -> 166-182 ms on
    PostgreSQL, 165-195 -> 145-163 ms on SQLite)."""
    signals.request_started.disconnect(db.close_old_connections)
    signals.request_started.disconnect(db.reset_queries)
    signals.request_finished.connect(db.reset_queries)


_no_thread_hop_at_request_start()
django_application = SharedThreadsASGIHandler()


# Requests begun and ended since start-up: the collector's clock
# (chat.lifecycle) skips its young collection while none begins or ends.
_turnover = 0


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            from chat import lifecycle

            lifecycle.tune_garbage_collector(turnover=lambda: _turnover)
            lifecycle.watch_for_termination()
            lifecycle.watch_for_count_requests()
            await lifecycle.start_heartbeat()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            from chat import lifecycle

            await lifecycle.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = telemetry.configure(django_application)
