"""The OpenAI Responses API of new Foundry agents, and the pieces the chat
completions API shares with it (the paced reply loop, the frame sink).

azure-ai-projects 2.x's `get_openai_client()` points the openai client at
``{endpoint}/openai/v1``; served there: ``POST /conversations``, ``GET|DELETE
/conversations/{id}``, ``POST /responses`` (``"stream": true`` answers SSE),
``GET /responses/{id}`` and ``POST /responses/{id}/cancel``.

A response names the agent in ``"agent_reference": {"name", "version"}`` (the
emulator has one, `FOUNDRY_AGENT_NAME`, version "1") or asks for a ``model``. Its
stream is ``event: <type>`` / ``data: {"type": <type>, "sequence_number": n, ...}``
in the order the openai client expects: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta
per token (then two response.output_text.annotation.added with `annotations`),
response.output_text.done, response.content_part.done, response.output_item.done,
response.completed; then the body ends.

Stream faults: run_failed sends response.failed, error_event an ``error`` event,
max_tokens and content_filter a response.incomplete with that reason; disconnect,
hang and incomplete behave as for runs. An http_404 fault is an unknown
conversation.

Unlike a classic run, a response lives on its connection, as on the service
outside background mode: when the client closes the stream the response stops,
keeps its partial text in the conversation, turns "cancelled" and is recorded in
`cancelled_runs`. The cancel endpoint accepts only background responses, which the
emulator does not run, so it answers 400 as the service does for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import HTTP_FAULTS, RESPONSE_CREATE, STREAM_FAULTS, EmulatorConfig
from .faults import ApiError, bad_request, http_fault, not_found
from .store import Message, new_id, now
from .stream import (
    CITATION_FILE_ID,
    CITATION_TITLE,
    CITATION_URL,
    SERVER_ERROR,
    HoldGate,
    RecordedDelta,
    Token,
    reply_tokens,
)

if TYPE_CHECKING:
    from .server import AgentsEmulator

logger = logging.getLogger("chat.emulator")

FOUNDRY_AGENT_NAME = "emulator-agent"
FOUNDRY_AGENT_VERSION = "1"
CITATION_FILENAME = "agents-overview.md"
# How often a reply that is sending nothing checks that its client is still there.
CLIENT_POLL_SECONDS = 0.02
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
ACTIVE_STATUSES = frozenset({"queued", "in_progress"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler, str]


@dataclass
class Conversation:
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_id("conv"))
    created_at: int = field(default_factory=now)
    messages: list[Message] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": self.metadata,
        }


@dataclass
class Response:
    model: str
    conversation_id: str | None
    agent: dict[str, Any] | None
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=now)
    status: str = "in_progress"
    text: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    incomplete_details: dict[str, str] | None = None
    usage: dict[str, Any] | None = None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def content_part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": self.text,
            "annotations": self.annotations,
            "logprobs": [],
        }

    def item(self, status: str, *, with_content: bool = True) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [self.content_part()] if with_content else [],
        }

    def to_dict(self) -> dict[str, Any]:
        if self.active:
            output = [self.item("in_progress")] if self.text else []
        else:
            status = "completed" if self.status == "completed" else "incomplete"
            output = [self.item(status)]
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            "instructions": None,
            "max_output_tokens": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self.usage,
            "metadata": {},
            "conversation": (
                {"id": self.conversation_id} if self.conversation_id else None
            ),
            "agent_reference": self.agent,
        }


# -- shared by the OpenAI-protocol APIs -----------------------------------------


class FrameSink:
    """Writes a reply's frames as chunks of one response; detaches (and calls
    `on_gone`) when a write finds the client gone."""

    def __init__(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        *,
        run_id: str,
        thread_id: str,
        deltas: list[RecordedDelta],
        on_gone: Callable[[], None],
    ) -> None:
        self._request = request
        self._response = response
        self._run_id = run_id
        self._thread_id = thread_id
        self._deltas = deltas
        self._on_gone = on_gone
        self.attached = True

    async def send(self, frame: str, delta: tuple[int, str] | None = None) -> None:
        if not self.attached:
            return
        wall, mono = time.time(), time.monotonic()
        try:
            await self._response.write(frame.encode())
        except ConnectionError:
            self.attached = False
            self._on_gone()
            return
        if delta is not None:
            index, text = delta
            self._deltas.append(
                RecordedDelta(self._run_id, self._thread_id, index, text, wall, mono)
            )

    async def end(self) -> None:
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
    """One reply of an OpenAI-protocol API, tied to its client's connection.

    `drive` sends the tokens at the configured pace, holds and applies stream
    faults as a classic run does; subclasses write their protocol's frames. The
    reply stops when its client goes away: a write fails, or, while nothing is
    being written, the connection is seen closed.
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
        on_cancelled: Callable[[str], None],
    ) -> None:
        self.run_id = run_id
        self.thread_id = thread_id
        self.cancel_requested = cancel_requested
        self.config = config
        self.tokens = tokens
        self.gate = gate
        self.deltas = deltas
        self.on_cancelled = on_cancelled
        self.sink: FrameSink | None = None
        self.sent = 0
        self.client_gone = False

    @property
    def active(self) -> bool:
        raise NotImplementedError

    async def serve(
        self, request: web.Request, response: web.StreamResponse | None
    ) -> None:
        """Drives the reply, streaming into `response` when given."""
        if response is not None:
            self.sink = FrameSink(
                request,
                response,
                run_id=self.run_id,
                thread_id=self.thread_id,
                deltas=self.deltas,
                on_gone=self.client_left,
            )
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

    async def drive(self) -> None:
        config, tokens = self.config, self.tokens
        await self._start()
        fault = config.fault if config.fault in STREAM_FAULTS else None
        for index in range(len(tokens) + 1):
            if fault and index == min(config.fault_after, len(tokens)):
                return await self._strike(fault)
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
            await asyncio.sleep(0)
            return cancelled.is_set()
        try:
            async with asyncio.timeout(seconds):
                await cancelled.wait()
        except TimeoutError:
            return False
        return True

    async def _strike(self, fault: str) -> None:
        """Applies a stream fault, which ends the reply: a reply on a cut or
        ended connection stops, as a foreground response does."""
        match fault:
            case "hang":
                await self._pause(None)
                await self._cancelled()
            case "disconnect":
                # Stopped before the cut, so the closed socket is not taken for a
                # client that left.
                self._stop("failed")
                if self.sink is not None:
                    self.sink.cut()
            case "incomplete":
                self._stop("failed")
                if self.sink is not None:
                    await self.sink.end()
            case _:
                await self._fail(fault)

    async def _cancelled(self) -> None:
        self._stop("cancelled")
        if self.client_gone:
            self.on_cancelled(self.run_id)

    def _stop(self, status: str) -> None:
        """Ends the reply with `status`, keeping what was sent."""
        raise NotImplementedError

    async def _start(self) -> None:
        raise NotImplementedError

    async def _delta(self, index: int, token: Token) -> None:
        raise NotImplementedError

    async def _completed(self) -> None:
        raise NotImplementedError

    async def _fail(self, fault: str) -> None:
        """Ends the reply the protocol's way for run_failed, error_event,
        max_tokens or content_filter."""
        raise NotImplementedError


def sse_frame(data: dict[str, Any], event: str | None = None) -> str:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n"


def check_http_fault(
    config: EmulatorConfig, operation: str, missing: tuple[str, str]
) -> None:
    """Raises the HTTP fault aimed at `operation`; a 404 is about `missing`,
    a (kind, id) pair."""
    if config.fault not in HTTP_FAULTS or not config.aims_at(operation):
        return
    if config.fault == "http_404":
        raise not_found(*missing)
    raise http_fault(config.fault, thread_id=None, retry_after=config.retry_after)


async def read_json(request: web.Request) -> dict[str, Any]:
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


def content_text(content: Any) -> str:
    """Text of a message: a string or a list of text parts (any text type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict)
            and part.get("type") in ("text", "input_text", "output_text")
        )
    raise bad_request("Invalid type for 'content': expected a string or an array.")


def last_user_text(messages: list[Message]) -> str:
    users = [m for m in messages if m.role == "user"]
    return users[-1].text if users else ""


# -- the Responses API -----------------------------------------------------------


class ResponseStream(PacedReply):
    def __init__(
        self,
        *,
        response: Response,
        conversation: Conversation | None,
        prompt_tokens: int,
        **options: Any,
    ) -> None:
        super().__init__(
            run_id=response.id,
            thread_id=conversation.id if conversation else "",
            cancel_requested=response.cancel_requested,
            **options,
        )
        self.response = response
        self.conversation = conversation
        self.prompt_tokens = prompt_tokens
        self.sequence = 0

    @property
    def active(self) -> bool:
        return self.response.active

    async def _start(self) -> None:
        response = self.response
        await self._emit("response.created", response=response.to_dict())
        await self._emit("response.in_progress", response=response.to_dict())
        await self._emit(
            "response.output_item.added",
            output_index=0,
            item=response.item("in_progress", with_content=False),
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await self._emit("response.content_part.added", **self._at(), part=part)

    async def _delta(self, index: int, token: Token) -> None:
        self.response.text += token.text
        await self._emit(
            "response.output_text.delta",
            record=(index, token.text),
            **self._at(),
            delta=token.text,
            logprobs=[],
        )

    async def _completed(self) -> None:
        response = self.response
        if self.config.annotations:
            for index, annotation in enumerate(_citations(len(response.text))):
                response.annotations.append(annotation)
                await self._emit(
                    "response.output_text.annotation.added",
                    **self._at(),
                    annotation_index=index,
                    annotation=annotation,
                )
        await self._close_message("completed")
        response.usage = self._usage()
        self._stop("completed")
        await self._emit("response.completed", response=response.to_dict())

    async def _fail(self, fault: str) -> None:
        response = self.response
        match fault:
            case "run_failed":
                response.error = dict(SERVER_ERROR)
                self._stop("failed")
                await self._emit("response.failed", response=response.to_dict())
            case "error_event":
                response.error = dict(SERVER_ERROR)
                self._stop("failed")
                await self._emit("error", **SERVER_ERROR, param=None)
            case "max_tokens" | "content_filter":
                reason = "max_output_tokens" if fault == "max_tokens" else fault
                await self._close_message("incomplete")
                response.incomplete_details = {"reason": reason}
                response.usage = self._usage()
                self._stop("incomplete")
                await self._emit("response.incomplete", response=response.to_dict())

    def _stop(self, status: str) -> None:
        response = self.response
        response.status = status
        if self.conversation is not None:
            message_status = "completed" if status == "completed" else "incomplete"
            self.conversation.messages.append(
                Message(
                    thread_id=self.conversation.id,
                    role="assistant",
                    text=response.text,
                    status=message_status,
                )
            )

    async def _close_message(self, status: str) -> None:
        response = self.response
        at = self._at()
        await self._emit(
            "response.output_text.done", **at, text=response.text, logprobs=[]
        )
        part = response.content_part()
        await self._emit("response.content_part.done", **at, part=part)
        await self._emit(
            "response.output_item.done", output_index=0, item=response.item(status)
        )

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.response.item_id, "output_index": 0, "content_index": 0}

    def _usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.sent,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.sent,
        }

    async def _emit(
        self, event: str, record: tuple[int, str] | None = None, **fields: Any
    ) -> None:
        data = {"type": event, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        if self.sink is not None:
            await self.sink.send(sse_frame(data, event), record)


def _citations(offset: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "url_citation",
            "url": CITATION_URL,
            "title": CITATION_TITLE,
            "start_index": offset,
            "end_index": offset,
        },
        {
            "type": "file_citation",
            "file_id": CITATION_FILE_ID,
            "filename": CITATION_FILENAME,
            "index": offset,
        },
    ]


class ResponsesApi:
    """Conversations and responses, stored on the emulator next to its threads."""

    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate

    def routes(self, prefix: str) -> list[Route]:
        conversation = prefix + "/conversations/{conversation_id}"
        response = prefix + "/responses/{response_id}"
        return [
            (
                "POST",
                prefix + "/conversations",
                self._create_conversation,
                "conversations.create",
            ),
            ("GET", conversation, self._get_conversation, "conversations.get"),
            ("DELETE", conversation, self._delete_conversation, "conversations.delete"),
            ("POST", prefix + "/responses", self._create_response, RESPONSE_CREATE),
            ("GET", response, self._get_response, "responses.get"),
            ("POST", response + "/cancel", self._cancel_response, "responses.cancel"),
        ]

    def _conversation(self, conversation_id: str) -> Conversation:
        conversation = self.emulator.conversations.get(conversation_id)
        if conversation is None:
            raise not_found("conversation", conversation_id)
        return conversation

    def _response(self, request: web.Request) -> Response:
        response_id = request.match_info["response_id"]
        response = self.emulator.responses.get(response_id)
        if response is None:
            raise not_found("response", response_id)
        return response

    async def _create_conversation(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("Invalid type for 'metadata': expected an object.")
        conversation = Conversation(metadata=metadata)
        conversation.messages = _input_messages(conversation.id, body.get("items"))
        self.emulator.conversations[conversation.id] = conversation
        return web.json_response(conversation.to_dict())

    async def _get_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation_id"]
        return web.json_response(self._conversation(conversation_id).to_dict())

    async def _delete_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request.match_info["conversation_id"])
        for response in self.emulator.responses.values():
            if response.conversation_id == conversation.id and response.active:
                response.cancel_requested.set()
        del self.emulator.conversations[conversation.id]
        return web.json_response(
            {"id": conversation.id, "object": "conversation.deleted", "deleted": True}
        )

    async def _get_response(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._response(request).to_dict())

    async def _cancel_response(self, request: web.Request) -> web.StreamResponse:
        self._response(request)
        raise bad_request(
            "Only responses created with background=true can be cancelled."
        )

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        conversation_id = _conversation_id(body.get("conversation"))
        messages = _input_messages(conversation_id or "", body.get("input"))
        user_text = last_user_text(messages)
        config = self.emulator.reply_config(RESPONSE_CREATE, user_text)
        missing = ("conversation", conversation_id or "conv_unknown")
        check_http_fault(config, RESPONSE_CREATE, missing)
        agent = _agent_reference(body.get("agent_reference"))
        model = body.get("model") or config.model
        conversation = None
        if conversation_id is not None:
            conversation = self._conversation(conversation_id)
            conversation.messages.extend(messages)
            messages = conversation.messages
        response = Response(model=model, conversation_id=conversation_id, agent=agent)
        self.emulator.responses[response.id] = response
        stream = ResponseStream(
            response=response,
            conversation=conversation,
            prompt_tokens=sum(len(m.text.split()) for m in messages),
            config=config,
            # Responses cite by position: the text carries no citation markers.
            tokens=reply_tokens(
                dataclasses.replace(config, annotations=False), user_text
            ),
            gate=self.gate,
            deltas=self.emulator.deltas,
            on_cancelled=self.emulator.cancelled_runs.append,
        )
        if not body.get("stream"):
            await stream.serve(request, None)
            return web.json_response(response.to_dict())
        http_response = web.StreamResponse(headers=SSE_HEADERS)
        http_response.enable_chunked_encoding()
        await http_response.prepare(request)
        await stream.serve(request, http_response)
        return http_response


def _conversation_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    raise bad_request("Invalid 'conversation': expected an id or {\"id\": ...}.")


def _agent_reference(reference: Any) -> dict[str, Any] | None:
    if reference is None:
        return None
    if not isinstance(reference, dict) or not reference.get("name"):
        raise bad_request("Invalid 'agent_reference': expected {\"name\": ...}.")
    name, version = reference["name"], reference.get("version")
    if name != FOUNDRY_AGENT_NAME or version not in (None, FOUNDRY_AGENT_VERSION):
        label = f"{name} version {version}" if version else name
        raise ApiError(404, "not_found", f"Agent {label} was not found.")
    return {
        "type": "agent_reference",
        "name": name,
        "version": FOUNDRY_AGENT_VERSION,
    }


def _input_messages(conversation_id: str, raw: Any) -> list[Message]:
    """The messages of an `input` (a string or message items) or of `items`."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Message(thread_id=conversation_id, role="user", text=raw)]
    if not isinstance(raw, list):
        raise bad_request("Invalid type for 'input': expected a string or an array.")
    messages = []
    for item in raw:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise bad_request("The emulator accepts only message input items.")
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad_request(f"Invalid value for 'role': {role!r}.")
        text = content_text(item.get("content"))
        messages.append(Message(thread_id=conversation_id, role=role, text=text))
    return messages
