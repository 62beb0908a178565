"""The paced-stream engine every protocol's replies run on.

`PacedReply.drive` sends a reply's tokens at the configured pace, waits at
`hold_after` for `release()`, and applies stream faults; a protocol writes its own
frames in a subclass. A classic run lives on the server: when its client goes away
(or a `disconnect`/`incomplete` fault cuts the body) it keeps going until it
completes or is cancelled, as on the real service. A `ConnectionReply` (a response
or a chat completion) lives on its connection and stops then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .config import STREAM_FAULTS, EmulatorConfig, strip_directives

logger = logging.getLogger("emulator")

CITATION_URL = "https://learn.microsoft.com/azure/ai-foundry/agents/overview"
CITATION_TITLE = "What is Azure AI Foundry Agent Service?"
CITATION_FILE_ID = "assistant-emulatorfile0001"
CITATION_QUOTE = "Agents combine a model, instructions and tools."

# What the emulated code interpreter runs and prints.
INTERPRETER_CODE = "print(sum(range(10)))"
INTERPRETER_LOGS = "45\n"
SEARCH_QUERY = "Azure AI Foundry agents"
# The chart code interpreter draws with `image` (a 1x1 PNG): a classic run's
# image_file, a response's container file.
IMAGE_FILE_ID = "assistant-emulatorimage0001"
CONTAINER_IMAGE_ID = "cfile_emulatorimage0001"
IMAGE_NAME = "chart.png"
IMAGE_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

SERVER_ERROR = {"code": "server_error", "message": "Sorry, something went wrong."}

# How often a reply that is sending nothing checks that its client is still there.
CLIENT_POLL_SECONDS = 0.02

# Words with their leading whitespace, so joining the tokens restores the text.
_TOKEN_RE = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True)
class Token:
    text: str
    annotations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class RecordedDelta:
    """One text delta as it was handed to the socket."""

    run_id: str
    thread_id: str
    index: int
    text: str
    time: float
    monotonic: float


def function_call(spec: str) -> tuple[str, str]:
    """A `function_calls` entry (`name` or `name {json}`) as (name, arguments)."""
    name, _, arguments = spec.strip().partition(" ")
    return name, arguments.strip() or "{}"


def reply_tokens(config: EmulatorConfig, user_text: str) -> list[Token]:
    if config.tokens is not None:
        pieces = [f" tok{i}" if i else "tok0" for i in range(config.tokens)]
    elif isinstance(config.reply, list):
        pieces = list(config.reply)
    elif config.reply == "echo":
        said = strip_directives(user_text)
        pieces = _TOKEN_RE.findall(f"You said: {said}" if said else "You said nothing.")
    else:
        pieces = _TOKEN_RE.findall(config.reply)
    tokens = [Token(piece) for piece in pieces]
    if config.annotations:
        tokens += _citation_tokens(offset=sum(len(piece) for piece in pieces))
    return tokens


def _citation_tokens(offset: int) -> list[Token]:
    url_marker, file_marker = "【4:0†source】", "【4:1†source】"
    url_end = offset + len(url_marker)
    url = {
        "index": 0,
        "type": "url_citation",
        "text": url_marker,
        "start_index": offset,
        "end_index": url_end,
        "url_citation": {"url": CITATION_URL, "title": CITATION_TITLE},
    }
    file = {
        "index": 1,
        "type": "file_citation",
        "text": file_marker,
        "start_index": url_end,
        "end_index": url_end + len(file_marker),
        "file_citation": {"file_id": CITATION_FILE_ID, "quote": CITATION_QUOTE},
    }
    return [Token(url_marker, (url,)), Token(file_marker, (file,))]


class HoldGate:
    """Where `hold_after` streams wait for `release()`.

    A release with nobody waiting is kept for the next hold, so a test that
    releases as soon as it sees the first chunk cannot lose the race.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self._pending = 0

    def release(self) -> int:
        if not self._waiters:
            self._pending += 1
            return 0
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return len(waiters)

    def reset(self) -> None:
        self._pending = 0

    async def wait(self, cancelled: asyncio.Event) -> bool:
        """Waits for a release; True if the run was cancelled first."""
        if self._pending:
            self._pending -= 1
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        cancel_wait = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait(
                {waiter, cancel_wait}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._waiters.discard(waiter)
            cancel_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancel_wait
        return not waiter.done()


class FrameSink:
    """Writes a reply's frames as chunks of one response, recording each delta;
    detaches (and tells the reply) when a write finds the client gone."""

    def __init__(
        self, request: web.BaseRequest, response: web.StreamResponse, reply: PacedReply
    ) -> None:
        self._request = request
        self._response = response
        self._reply = reply
        self.attached = True

    async def send(self, frame: str, delta: tuple[int, str] | None = None) -> None:
        if not self.attached:
            return
        wall, mono = time.time(), time.monotonic()
        try:
            await self._response.write(frame.encode())
        except ConnectionError:
            self.attached = False
            self._reply.client_left()
            return
        if delta is not None:
            reply, (index, text) = self._reply, delta
            reply.deltas.append(
                RecordedDelta(reply.run_id, reply.thread_id, index, text, wall, mono)
            )

    async def end(self) -> None:
        """Ends the chunked body cleanly (the terminating zero-length chunk)."""
        if self.attached:
            self.attached = False
            with contextlib.suppress(ConnectionError):
                await self._response.write_eof()

    def cut(self) -> None:
        """Closes the socket inside the chunked body, as a dropped connection does."""
        self.attached = False
        if self._request.transport is not None:
            self._request.transport.close()


class PacedReply:
    """Takes one reply from start to a terminal state, streaming once attached.

    Subclasses write their protocol's frames in `_start`, `_delta`, `_completed`,
    `_fail` (run_failed, error_event, max_tokens, content_filter) and `_cancelled`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        thread_id: str,
        cancel_requested: asyncio.Event,
        config: EmulatorConfig,
        tokens: list[Token],
        gate: HoldGate,
        deltas: list[RecordedDelta],
    ) -> None:
        self.run_id = run_id
        self.thread_id = thread_id
        self.cancel_requested = cancel_requested
        self.config = config
        self.tokens = tokens
        self.gate = gate
        self.deltas = deltas
        self.sink: FrameSink | None = None
        self.sent = 0

    def attach(self, request: web.Request, response: web.StreamResponse) -> None:
        """Streams the reply's frames into `response` from now on."""
        self.sink = FrameSink(request, response, self)

    def client_left(self) -> None:
        """A write found the client gone; a run goes on without it."""

    async def _opened(self) -> None:
        """What the stream sends at once, before a `hold_start`."""

    async def drive(self) -> None:
        config, tokens = self.config, self.tokens
        await self._opened()
        if config.hold_start and await self.gate.wait(self.cancel_requested):
            return await self._cancelled()
        await self._start()
        for index, tool in enumerate(config.tools):
            await self._tool_started(index, tool)
            if config.hold_tool and await self.gate.wait(self.cancel_requested):
                return await self._cancelled()
            await self._tool_done(index, tool)
        if config.function_calls and await self._call_functions():
            return
        await self._open_message()
        fault = config.fault if config.fault in STREAM_FAULTS else None
        for index in range(len(tokens) + 1):
            if fault and index == min(config.fault_after, len(tokens)):
                if await self._strike(fault):
                    return
                fault = None
            if self._holds_at(index) and await self.gate.wait(self.cancel_requested):
                return await self._cancelled()
            if index == len(tokens):
                break
            delay = config.first_token_delay if index == 0 else config.token_interval
            if await self._pause(delay):
                return await self._cancelled()
            await self._delta(index, tokens[index])
            self.sent += 1
        if self.cancel_requested.is_set():
            return await self._cancelled()
        await self._completed()

    def _holds_at(self, index: int) -> bool:
        hold_after = self.config.hold_after
        return hold_after is not None and index == min(hold_after, len(self.tokens))

    async def _pause(self, seconds: float | None) -> bool:
        """Sleeps (forever if None) unless cancelled; True if cancelled."""
        cancelled = self.cancel_requested
        if seconds == 0:
            # Still yield, so a cancel request can land between zero-delay tokens.
            await asyncio.sleep(0)
            return cancelled.is_set()
        try:
            async with asyncio.timeout(seconds):
                await cancelled.wait()
        except TimeoutError:
            return False
        return True

    async def _strike(self, fault: str) -> bool:
        """Applies a stream fault; True if it ended the reply."""
        match fault:
            case "hang":
                await self._pause(None)
                await self._cancelled()
            case "disconnect":
                if self.sink is not None:
                    self.sink.cut()
                return False
            case "incomplete":
                if self.sink is not None:
                    await self.sink.end()
                return False
            case _:
                await self._fail(fault)
        return True

    async def _send(self, frame: str, delta: tuple[int, str] | None = None) -> None:
        if self.sink is not None:
            await self.sink.send(frame, delta)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _tool_started(self, index: int, tool: str) -> None:
        """A server-side tool call begins (protocols without tools skip it)."""

    async def _tool_done(self, index: int, tool: str) -> None:
        """The tool call started by `_tool_started` ends."""

    async def _call_functions(self) -> bool:
        """Asks the client for `function_calls`; True if that ended the reply
        (a response does; a cancelled run too), False to go on with the text."""
        return False

    async def _open_message(self) -> None:
        """The reply's text begins, after its tool calls."""

    async def _delta(self, index: int, token: Token) -> None:
        raise NotImplementedError

    async def _completed(self) -> None:
        raise NotImplementedError

    async def _fail(self, fault: str) -> None:
        raise NotImplementedError

    async def _cancelled(self) -> None:
        raise NotImplementedError


class ConnectionReply(PacedReply):
    """A reply that lives on its client's connection, as a response outside
    background mode or a chat completion does.

    It stops when its client goes away: a write fails, or, while nothing is being
    written, the connection is seen closed. Every stream fault ends it.
    """

    def __init__(self, *, on_cancelled: Callable[[str], None], **options: Any) -> None:
        super().__init__(**options)
        self.on_cancelled = on_cancelled
        self.client_gone = False

    @property
    def active(self) -> bool:
        raise NotImplementedError

    async def serve(
        self, request: web.Request, response: web.StreamResponse | None
    ) -> None:
        """Drives the reply, streaming into `response` when given."""
        if response is not None:
            self.attach(request, response)
        watcher = asyncio.create_task(self._watch(request))
        try:
            await self.drive()
        except Exception:
            if self.sink is None:
                raise
            # The headers are gone: cut the body rather than answer twice.
            logger.exception("Emulator stream %s failed", self.run_id)
            self.sink.cut()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self.sink is not None:
            await self.sink.end()

    def client_left(self) -> None:
        if self.active:
            self.client_gone = True
            self.cancel_requested.set()

    async def _watch(self, request: web.Request) -> None:
        while True:
            await asyncio.sleep(CLIENT_POLL_SECONDS)
            transport = request.transport
            if transport is None or transport.is_closing():
                self.client_left()
                return

    async def _strike(self, fault: str) -> bool:
        if fault in ("disconnect", "incomplete"):
            # Stopped before the cut, so the closed socket is not taken for a
            # client that left.
            self._stop("failed")
        await super()._strike(fault)
        return True

    async def _cancelled(self) -> None:
        self._stop("cancelled")
        if self.client_gone:
            self.on_cancelled(self.run_id)

    def _stop(self, status: str) -> None:
        """Ends the reply with `status`, keeping what was sent."""
        raise NotImplementedError
