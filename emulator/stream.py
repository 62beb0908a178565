"""Driving one run: the reply tokens, the SSE event sequence and stream faults.

The run lives on the server, not on the connection: when the client goes away
(or a `disconnect`/`incomplete` fault cuts the body) the run keeps going until it
completes or is cancelled, as on the real service. Only `hang` stops it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .config import STREAM_FAULTS, EmulatorConfig, strip_directives
from .store import Message, Run, Thread, new_id, now

CITATION_URL = "https://learn.microsoft.com/azure/ai-foundry/agents/overview"
CITATION_TITLE = "What is Azure AI Foundry Agent Service?"
CITATION_FILE_ID = "assistant-emulatorfile0001"
CITATION_QUOTE = "Agents combine a model, instructions and tools."

SERVER_ERROR = {"code": "server_error", "message": "Sorry, something went wrong."}

# Words with their leading whitespace, so joining the tokens restores the text.
_TOKEN_RE = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True)
class Token:
    text: str
    annotations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class RecordedDelta:
    """One `thread.message.delta` as it was handed to the socket."""

    run_id: str
    thread_id: str
    index: int
    text: str
    time: float
    monotonic: float


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


class SseSink:
    """Writes events as chunks of one response; detaches once the client leaves."""

    def __init__(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        run: Run,
        on_delta: Callable[[RecordedDelta], None],
    ) -> None:
        self._request = request
        self._response = response
        self._run = run
        self._on_delta = on_delta
        self.attached = True

    async def send(self, event: str, data: str, delta: tuple[int, str] | None) -> None:
        if not self.attached:
            return
        wall, mono = time.time(), time.monotonic()
        try:
            await self._response.write(f"event: {event}\ndata: {data}\n\n".encode())
        except ConnectionError:
            self.attached = False
            return
        if delta is not None:
            index, text = delta
            self._on_delta(
                RecordedDelta(
                    self._run.id, self._run.thread_id, index, text, wall, mono
                )
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


class RunDriver:
    """Takes a run from queued to a terminal status, streaming if given a sink."""

    def __init__(
        self,
        *,
        thread: Thread,
        run: Run,
        config: EmulatorConfig,
        tokens: list[Token],
        prompt_tokens: int,
        gate: HoldGate,
        sink: SseSink | None,
    ) -> None:
        self.thread = thread
        self.run = run
        self.config = config
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.gate = gate
        self.sink = sink
        self.message = Message(
            thread_id=thread.id,
            role="assistant",
            text="",
            run_id=run.id,
            assistant_id=run.assistant_id,
            status="in_progress",
            completed_at=None,
        )
        self.step_id = new_id("step")
        self.step_created_at = now()

    async def drive(self) -> None:
        run, config, tokens = self.run, self.config, self.tokens
        await self._emit("thread.run.created", run.to_dict())
        await self._emit("thread.run.queued", run.to_dict())
        run.status, run.started_at = "in_progress", now()
        await self._emit("thread.run.in_progress", run.to_dict())
        self.thread.messages.append(self.message)
        await self._emit("thread.run.step.created", self._step("in_progress"))
        await self._emit("thread.message.created", self.message.to_dict())
        await self._emit("thread.message.in_progress", self.message.to_dict())

        fault = config.fault if config.fault in STREAM_FAULTS else None
        for index in range(len(tokens) + 1):
            if fault and index == min(config.fault_after, len(tokens)):
                if await self._strike(fault):
                    return
                fault = None
            if self._holds_at(index) and await self.gate.wait(run.cancel_requested):
                return await self._cancelled()
            if index == len(tokens):
                break
            delay = config.first_token_delay if index == 0 else config.token_interval
            if await self._pause(delay):
                return await self._cancelled()
            await self._delta(index, tokens[index])
        if run.cancel_requested.is_set():
            return await self._cancelled()
        await self._completed()

    def _holds_at(self, index: int) -> bool:
        hold_after = self.config.hold_after
        return hold_after is not None and index == min(hold_after, len(self.tokens))

    async def _delta(self, index: int, token: Token) -> None:
        self.message.text += token.text
        for annotation in token.annotations:
            self.message.annotations.append(
                {key: value for key, value in annotation.items() if key != "index"}
            )
        text: dict[str, Any] = {"value": token.text}
        if token.annotations:
            text["annotations"] = list(token.annotations)
        delta = {"content": [{"index": 0, "type": "text", "text": text}]}
        data = {"id": self.message.id, "object": "thread.message.delta", "delta": delta}
        await self._emit("thread.message.delta", data, delta=(index, token.text))

    async def _strike(self, fault: str) -> bool:
        """Applies a stream fault; True if it ended the run."""
        match fault:
            case "run_failed":
                await self._failed(event="thread.run.failed")
                return True
            case "error_event":
                await self._failed(event="error")
                return True
            case "hang":
                await self._pause(None)
                await self._cancelled()
                return True
            case "disconnect":
                if self.sink is not None:
                    self.sink.cut()
            case "incomplete":
                if self.sink is not None:
                    await self.sink.end()
        return False

    async def _pause(self, seconds: float | None) -> bool:
        """Sleeps (forever if None) unless cancelled; True if cancelled."""
        cancelled = self.run.cancel_requested
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

    async def _completed(self) -> None:
        run, message = self.run, self.message
        message.status, message.completed_at = "completed", now()
        await self._emit("thread.message.completed", message.to_dict())
        completion = len(self.tokens)
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        step = self._step("completed", completed_at=now(), usage=usage)
        await self._emit("thread.run.step.completed", step)
        run.status, run.completed_at, run.usage = "completed", now(), usage
        await self._emit("thread.run.completed", run.to_dict())
        await self._emit_done()

    async def _failed(self, *, event: str) -> None:
        run = self.run
        run.status, run.failed_at, run.last_error = "failed", now(), dict(SERVER_ERROR)
        self._stop_message("run_failed")
        if event == "error":
            await self._emit("error", {"error": dict(SERVER_ERROR)})
        else:
            await self._emit(event, run.to_dict())
        await self._emit_done()

    async def _cancelled(self) -> None:
        run = self.run
        run.status, run.cancelled_at = "cancelled", now()
        self._stop_message("run_cancelled")
        await self._emit("thread.run.cancelled", run.to_dict())
        await self._emit_done()

    def _stop_message(self, reason: str) -> None:
        """Keeps the partial reply in the thread, marked incomplete."""
        message = self.message
        message.status, message.incomplete_at = "incomplete", now()
        message.incomplete_details = {"reason": reason}

    def _step(self, status: str, **changes: Any) -> dict[str, Any]:
        run = self.run
        step = {
            "id": self.step_id,
            "object": "thread.run.step",
            "created_at": self.step_created_at,
            "run_id": run.id,
            "assistant_id": run.assistant_id,
            "thread_id": run.thread_id,
            "type": "message_creation",
            "status": status,
            "cancelled_at": None,
            "completed_at": None,
            "expires_at": run.to_dict()["expires_at"],
            "failed_at": None,
            "last_error": None,
            "step_details": {
                "type": "message_creation",
                "message_creation": {"message_id": self.message.id},
            },
            "usage": None,
        }
        return step | changes

    async def _emit(
        self, event: str, data: dict[str, Any], delta: tuple[int, str] | None = None
    ) -> None:
        if self.sink is not None:
            payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            await self.sink.send(event, payload, delta)

    async def _emit_done(self) -> None:
        if self.sink is not None:
            await self.sink.send("done", "[DONE]", None)
