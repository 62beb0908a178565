"""The load client: N concurrent SSE chat streams over aiohttp, timed frame by frame.

aiohttp rather than httpx: at 1,000 streams httpx's per-read overhead (anyio
streams, h11 parsing in Python) costs several times aiohttp's C-parsed reads on
the core the client shares with the emulator, and every microsecond the client
spends there shows up as relay latency. Times are `time.monotonic()`, the clock
the emulator stamps its deltas with.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_BODY = orjson.dumps({"message": "benchmark: say something"})
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


@dataclass(slots=True)
class Stream:
    """What one client saw of one chat reply."""

    started: float = 0.0
    headers_at: float | None = None
    status: int | None = None
    first_chunk_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_texts: list[str] = field(default_factory=list)
    frames: int = 0
    thread_id: str | None = None
    conversation_id: str | None = None
    final: str | None = None  # the type of the last frame: "done" or "error"
    final_text: str | None = None
    error: str | None = None
    ended_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunk_texts)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.final == "done"


def _frame_data(raw: bytes) -> Any:
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            return orjson.loads(line[5:])
    return None  # a comment (keep-alive)


async def run_stream(
    session: aiohttp.ClientSession,
    url: str,
    stream: Stream,
    timeout: float,
    on_open: Callable[[Stream], None],
    on_close: Callable[[Stream], None],
) -> None:
    monotonic = time.monotonic
    stream.started = monotonic()
    opened = False
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=CHAT_BODY, headers=HEADERS) as response:
                stream.headers_at = monotonic()
                stream.status = response.status
                opened = True
                on_open(stream)
                if response.status != 200:
                    body = await response.read()
                    stream.error = f"HTTP {response.status}: {body[:200]!r}"
                    return
                buffer = b""
                async for data in response.content.iter_any():
                    now = monotonic()
                    buffer += data
                    if b"\n\n" not in buffer:
                        continue
                    *frames, buffer = buffer.split(b"\n\n")
                    for raw in frames:
                        payload = _frame_data(raw)
                        if payload is None:
                            continue
                        stream.frames += 1
                        kind = payload.get("type")
                        if kind == "chunk":
                            if stream.first_chunk_at is None:
                                stream.first_chunk_at = now
                            stream.chunk_times.append(now)
                            stream.chunk_texts.append(payload["content"])
                        elif kind == "metadata":
                            stream.thread_id = payload.get("thread_id")
                            stream.conversation_id = payload.get("conversation_id")
                        elif kind in ("done", "error"):
                            stream.final = kind
                            stream.final_text = payload.get("full_response")
                            if kind == "error":
                                stream.error = f"error frame: {payload}"
                if stream.final is None:
                    stream.error = "the stream ended without a done or error frame"
    except TimeoutError:
        stream.error = f"timed out after {timeout:g} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ended_at = monotonic()
        if opened:
            on_close(stream)


class Load:
    """Opens `count` streams, `ramp` seconds apart in total, and tracks how many
    are open (response headers received, body not finished)."""

    def __init__(self, url: str, count: int, *, ramp: float, timeout: float) -> None:
        self.url = url
        self.count = count
        self.ramp = ramp
        self.timeout = timeout
        self.streams = [Stream() for _ in range(count)]
        self.open = 0
        self.max_open = 0
        self.finished = 0

    def _opened(self, stream: Stream) -> None:
        self.open += 1
        self.max_open = max(self.max_open, self.open)

    def _closed(self, stream: Stream) -> None:
        self.open -= 1

    async def run(self, session: aiohttp.ClientSession) -> list[Stream]:
        tasks = []
        start = time.monotonic()
        step = self.ramp / self.count if self.count else 0.0
        for n, stream in enumerate(self.streams):
            if step:
                delay = start + n * step - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(
                    run_stream(
                        session,
                        self.url,
                        stream,
                        self.timeout,
                        self._opened,
                        self._closed,
                    )
                )
            )
        await asyncio.gather(*tasks)
        return self.streams


def client_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
