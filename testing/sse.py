"""Reading POST /api/chat's event stream: in process (Django's test client) and
over HTTP (a live server's lines); and whole replies as frames, for parsers."""

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse
from django.test import AsyncClient

from chat.frames import Chunk, Done, Frame, Metadata


async def chat(client: AsyncClient, message: str = "Say hello", **fields: Any) -> Any:
    """POST /api/chat with `message` and any other body `fields`."""
    return await client.post(
        "/api/chat",
        {"message": message, **fields},
        content_type="application/json",
    )


async def reply_of(
    client: AsyncClient, message: str = "Say hello", **fields: Any
) -> list[dict[str, Any]]:
    """The data of every frame of a whole reply to `message`."""
    return data_frames(await read_stream(await chat(client, message, **fields)))


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Frames as dicts, in order: {"id": int | None, "data": dict} for each event
    (dispatched by its blank line), {"comment": str} for each comment line."""
    frames: list[dict[str, Any]] = []
    event: dict[str, Any] = {"id": None}
    for line in raw.decode().split("\n"):
        if line.startswith(":"):
            frames.append({"comment": line[1:].strip()})
        elif line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("data: "):
            event["data"] = orjson.loads(line[6:])
        elif not line and "data" in event:
            frames.append(event)
            event = {"id": None}
    return frames


async def read_stream(response: StreamingHttpResponse) -> list[dict[str, Any]]:
    body = b"".join([part async for part in response.streaming_content])
    return parse_sse(body)


async def read_then_leave(
    response: StreamingHttpResponse, until: Callable[[bytes], bool]
) -> bytes:
    """Reads the body until `until(body so far)` holds, then goes away as a closed
    tab does (Django's ASGI handler cancels the task sending the body)."""
    received = bytearray()
    enough = asyncio.Event()

    async def consume() -> None:
        async for part in response.streaming_content:
            received.extend(part)
            if until(bytes(received)):
                enough.set()

    reading = asyncio.create_task(consume())
    waiting = asyncio.create_task(enough.wait())
    await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
    ended = reading.done() and not enough.is_set()
    for task in (reading, waiting):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not ended, f"the stream ended first: {bytes(received)!r}"
    return bytes(received)


def data_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["data"] for frame in frames if "data" in frame]


def chunks_text(data: Iterable[dict[str, Any]]) -> str:
    """The reply text the chunk frames among `data` carry."""
    return "".join(d["content"] for d in data if d["type"] == "chunk")


def iter_data(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The data of each frame in an event stream's `lines`, as it arrives.

    Keep the iterator referenced while the stream should stay open: httpx closes
    the connection when its line iterator is collected."""
    for line in lines:
        if line.startswith("data: "):
            yield orjson.loads(line[6:])


def read_until_text(data: Iterator[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Frames from `data` up to the chunk that completes `text`, the part of a
    reply the upstream sent before it was held."""
    frames: list[dict[str, Any]] = []
    for frame in data:
        frames.append(frame)
        received = chunks_text(frames)
        if received == text:
            return frames
        assert text.startswith(received), (received, text)
    raise AssertionError(f"the stream ended before {text!r}: {frames}")


def reply_frames(texts: list[str], *between: Frame, agent: str = "Ω") -> list[Frame]:
    """A whole reply as the relay frames it: metadata, a chunk per text, the
    `between` frames (annotations), then done."""
    ids = {"conversation_id": "c", "message_id": "m"}
    return [
        Metadata(**ids, thread_id="t", backend="local", agent=agent, offline=True),
        *[Chunk(content=text) for text in texts],
        *between,
        Done(
            **ids,
            full_response="".join(texts),
            timestamp="2026-01-01T00:00:00+00:00",
            status="complete",
            usage=None,
        ),
    ]


def events_of(reply: list[Frame]) -> list[dict[str, Any]]:
    """What an SSE parser must read from `reply` framed with ids from 0."""
    return [
        {"id": str(seq), "data": frame.model_dump()} for seq, frame in enumerate(reply)
    ]
