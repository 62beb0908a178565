"""Response classes of our own. Imports nothing that needs Django's apps, so the
ASGI entry point can use them before `django.setup()`."""

from collections.abc import AsyncIterator, Callable

from django.http import StreamingHttpResponse


class EventStreamResponse(StreamingHttpResponse):
    """A `text/event-stream` response whose body is an async iterator of bytes,
    each item one or more whole events.

    The ASGI handler (`chatsite.asgi`) sends its items as they are, without the
    per-item wrapping of Django's streaming responses. So a middleware must not
    replace its `streaming_content`: what needs the end of the stream registers
    with `on_close`, which runs when the server closes the response."""

    def __init__(
        self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            events, content_type="text/event-stream; charset=utf-8", headers=headers
        )
        self.events = events
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        try:
            for callback in self._on_close:
                callback()
        finally:
            self._on_close.clear()
            super().close()
