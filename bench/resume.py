"""The reconnect client: a reply started, dropped after a few frames, resumed.

One sample: `POST /api/chat`, read `frames` data frames, close the connection
(the reply goes on without it: CHAT_ON_DISCONNECT=continue), wait `gap` seconds
so that frames are waiting in the reply log, then
`GET /api/conversations/<id>/stream` with `Last-Event-ID: <last id read>`,
read to the final frame. Timed: the GET sent → its first `data:` frame. Every
request opens a connection of its own, as a client that lost its network would.

No cookies: a cookie-less caller owns its conversations by their ids, so the GET
comes from the POST's owner.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from load import CHAT_BODY, HEADERS

RESUME_HEADERS = {"Accept": "text/event-stream"}


@dataclass(slots=True)
class Resumed:
    """What one client saw of a reply it dropped and resumed."""

    conversation_id: str | None = None
    thread_id: str | None = None
    last_id: int | None = None  # the last id read before the drop
    ids: list[int] = field(default_factory=list)  # both connections, in order
    texts: list[str] = field(default_factory=list)  # chunks, both connections
    sent_at: float = 0.0  # the GET sent
    headers_at: float | None = None
    first_frame_at: float | None = None
    replayed: int = 0  # data frames of the GET
    final: str | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def ok(self) -> bool:
        return self.error is None and self.final == "done"

    @property
    def ids_in_order(self) -> bool:
        """Every id once, ascending (runs of chunks replayed as one frame carry
        the id of their last part, so ids may skip)."""
        return all(a < b for a, b in zip(self.ids, self.ids[1:], strict=False))


def _parse(raw: bytes) -> tuple[int | None, Any]:
    event_id, payload = None, None
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            payload = orjson.loads(line[5:])
        elif line.startswith(b"id:"):
            event_id = int(line[3:])
    return event_id, payload


async def _frames(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[float, int | None, Any]]:
    """(read at, event id, payload) of each data frame; comments and the
    `retry:` field, which have no blank line of their own, ride with the next."""
    buffer = b""
    async for data in response.content.iter_any():
        now = time.monotonic()
        buffer += data
        if b"\n\n" not in buffer:
            continue
        *frames, buffer = buffer.split(b"\n\n")
        for raw in frames:
            event_id, payload = _parse(raw)
            if payload is not None:
                yield now, event_id, payload


def _note(sample: Resumed, event_id: int | None, payload: Any) -> None:
    if event_id is not None:
        sample.ids.append(event_id)
        sample.last_id = event_id
    kind = payload.get("type")
    if kind == "chunk":
        sample.texts.append(payload["content"])
    elif kind == "metadata":
        sample.conversation_id = payload.get("conversation_id")
        sample.thread_id = payload.get("thread_id")
    elif kind in ("done", "error"):
        sample.final = kind
        if kind == "error":
            sample.error = f"error frame: {payload}"


async def resume_once(
    session: aiohttp.ClientSession,
    chat_url: str,
    resume_base: str,
    *,
    frames: int,
    gap: float,
    timeout: float,
) -> Resumed:
    """One sample; `resume_base` is the server the GET goes to (the POST's, or
    another replica)."""
    sample = Resumed()
    try:
        async with asyncio.timeout(timeout):
            async with session.post(chat_url, data=CHAT_BODY, headers=HEADERS) as r:
                if r.status != 200:
                    sample.error = f"POST: HTTP {r.status}: {(await r.read())[:200]!r}"
                    return sample
                read = 0
                async with contextlib.aclosing(_frames(r)) as stream:
                    async for _at, event_id, payload in stream:
                        _note(sample, event_id, payload)
                        read += 1
                        if read >= frames or sample.final is not None:
                            break
                r.close()  # drops the connection, not back to the pool
            if sample.final is not None:
                sample.error = f"the reply ended within {frames} frames"
                return sample
            if sample.conversation_id is None or sample.last_id is None:
                sample.error = "no metadata frame or no ids before the drop"
                return sample
            await asyncio.sleep(gap)
            url = f"{resume_base}/api/conversations/{sample.conversation_id}/stream"
            headers = RESUME_HEADERS | {"Last-Event-ID": str(sample.last_id)}
            sample.sent_at = time.monotonic()
            async with session.get(url, headers=headers) as r:
                sample.headers_at = time.monotonic()
                if r.status != 200:
                    sample.error = f"GET: HTTP {r.status}: {(await r.read())[:200]!r}"
                    return sample
                async for at, event_id, payload in _frames(r):
                    if sample.first_frame_at is None:
                        sample.first_frame_at = at
                    sample.replayed += 1
                    _note(sample, event_id, payload)
                if sample.final is None:
                    sample.error = "the resumed stream ended without a final frame"
    except TimeoutError:
        sample.error = f"timed out after {timeout:g} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


def resume_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
