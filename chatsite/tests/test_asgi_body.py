"""The handler reads a request body whole from the message that brought it, and
one in parts as Django does (chatsite.asgi)."""

import io
from collections.abc import MutableMapping
from typing import Any

import pytest
from django.core.exceptions import RequestAborted

from chatsite.asgi import SharedThreadsASGIHandler

pytestmark = pytest.mark.no_database


def _receive(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> MutableMapping[str, Any]:
        return queue.pop(0)

    return receive


async def test_a_body_in_one_message_is_read_from_its_bytes() -> None:
    body = b'{"message": "hi"}'
    read = await SharedThreadsASGIHandler().read_body(
        _receive({"type": "http.request", "body": body, "more_body": False})
    )
    assert type(read) is io.BytesIO
    assert read.read() == body


async def test_a_body_in_parts_is_read_whole() -> None:
    read = await SharedThreadsASGIHandler().read_body(
        _receive(
            {"type": "http.request", "body": b"one ", "more_body": True},
            {"type": "http.request", "body": b"two ", "more_body": True},
            {"type": "http.request", "body": b"three", "more_body": False},
        )
    )
    assert read.read() == b"one two three"


async def test_a_large_body_in_one_message_goes_where_django_puts_it(
    settings: Any,
) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 10
    body = b"x" * 11
    read = await SharedThreadsASGIHandler().read_body(
        _receive({"type": "http.request", "body": body, "more_body": False})
    )
    assert type(read) is not io.BytesIO
    assert read.read() == body


async def test_a_client_that_leaves_while_sending_aborts_the_request() -> None:
    with pytest.raises(RequestAborted):
        await SharedThreadsASGIHandler().read_body(
            _receive(
                {"type": "http.request", "body": b"one ", "more_body": True},
                {"type": "http.disconnect"},
            )
        )
    with pytest.raises(RequestAborted):
        await SharedThreadsASGIHandler().read_body(
            _receive({"type": "http.disconnect"})
        )
