"""The classic Agents REST API: assistants, threads, messages and runs.

A run's stream is ``event: <name>`` / ``data: <json>`` frames in the order
azure-ai-agents parses: thread.run.created, thread.run.queued,
thread.run.in_progress, thread.run.step.created, thread.message.created,
thread.message.in_progress, thread.message.delta per token,
thread.message.completed, thread.run.step.completed, thread.run.completed, then
``event: done`` / ``data: [DONE]``. A run that is not streamed is driven in the
background; either way it goes on when its client leaves.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import RUN_CREATE, EmulatorConfig
from .faults import check_http_fault
from .http import (
    ApiError,
    Route,
    bad_request,
    content_text,
    deleted,
    find,
    metadata,
    not_found,
    number,
    open_stream,
    read_json,
    sse_frame,
)
from .store import Message, Run, Thread, last_user_text, list_page, new_id, now
from .stream import SERVER_ERROR, HoldGate, PacedReply, Token, reply_tokens

if TYPE_CHECKING:
    from .server import AgentsEmulator

INSTRUCTIONS = "You are a helpful assistant."
# The OpenAI protocols' truncated replies; a classic run has no such ending.
TRUNCATION_FAULTS = frozenset({"max_tokens", "content_filter"})


class RunStream(PacedReply):
    """Takes a run from queued to a terminal status, streaming once attached."""

    def __init__(
        self, *, thread: Thread, run: Run, prompt_tokens: int, **options: Any
    ) -> None:
        super().__init__(
            run_id=run.id,
            thread_id=thread.id,
            cancel_requested=run.cancel_requested,
            **options,
        )
        self.thread = thread
        self.run = run
        self.prompt_tokens = prompt_tokens
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

    async def _start(self) -> None:
        run = self.run
        await self._emit("thread.run.created", run.to_dict())
        await self._emit("thread.run.queued", run.to_dict())
        run.status, run.started_at = "in_progress", now()
        await self._emit("thread.run.in_progress", run.to_dict())
        self.thread.messages.append(self.message)
        await self._emit("thread.run.step.created", self._step("in_progress"))
        await self._emit("thread.message.created", self.message.to_dict())
        await self._emit("thread.message.in_progress", self.message.to_dict())

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
        if fault in TRUNCATION_FAULTS:
            return False
        return await super()._strike(fault)

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
        await self._send(sse_frame("[DONE]", "done"))

    async def _fail(self, fault: str) -> None:
        run = self.run
        run.status, run.failed_at, run.last_error = "failed", now(), dict(SERVER_ERROR)
        self._stop_message("run_failed")
        if fault == "error_event":
            await self._emit("error", {"error": dict(SERVER_ERROR)})
        else:
            await self._emit("thread.run.failed", run.to_dict())
        await self._send(sse_frame("[DONE]", "done"))

    async def _cancelled(self) -> None:
        run = self.run
        run.status, run.cancelled_at = "cancelled", now()
        self._stop_message("run_cancelled")
        await self._emit("thread.run.cancelled", run.to_dict())
        await self._send(sse_frame("[DONE]", "done"))

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
        await self._send(sse_frame(data, event), delta)


class AgentsApi:
    """Assistants, threads, messages and runs, stored on the emulator."""

    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate
        self.created_at = now()
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self, prefix: str) -> list[Route]:
        thread = prefix + "/threads/{thread_id}"
        message = thread + "/messages/{message_id}"
        run = thread + "/runs/{run_id}"
        return [
            ("GET", prefix + "/assistants/{agent_id}", self._agents_get, "agents.get"),
            ("POST", prefix + "/threads", self._threads_create, "threads.create"),
            # Before the {thread_id} routes, as on the service.
            ("POST", prefix + "/threads/runs", self._create_and_run, RUN_CREATE),
            ("GET", thread, self._threads_get, "threads.get"),
            ("DELETE", thread, self._threads_delete, "threads.delete"),
            ("POST", thread + "/messages", self._messages_create, "messages.create"),
            ("GET", thread + "/messages", self._messages_list, "messages.list"),
            ("GET", message, self._messages_get, "messages.get"),
            ("POST", thread + "/runs", self._runs_create, RUN_CREATE),
            ("GET", thread + "/runs", self._runs_list, "runs.list"),
            ("GET", run, self._runs_get, "runs.get"),
            ("POST", run + "/cancel", self._runs_cancel, "runs.cancel"),
        ]

    async def wait_for_runs(self) -> None:
        """Waits for the runs driven in the background to end."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _thread(self, request: web.Request) -> Thread:
        return find(self.emulator.threads, request.match_info["thread_id"], "thread")

    def _run(self, request: web.Request) -> Run:
        thread = self._thread(request)
        run_id = request.match_info["run_id"]
        run = self.emulator.runs.get(run_id)
        if run is None or run.thread_id != thread.id:
            raise not_found("run", run_id)
        return run

    async def _agents_get(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        agent_id = request.match_info["agent_id"]
        if agent_id != emulator.agent_id:
            raise not_found("assistant", agent_id)
        return web.json_response(
            {
                "id": emulator.agent_id,
                "object": "assistant",
                "created_at": self.created_at,
                "name": emulator.config.agent_name,
                "description": None,
                "model": emulator.config.model,
                "instructions": INSTRUCTIONS,
                "tools": [],
                "tool_resources": {},
                "temperature": 1.0,
                "top_p": 1.0,
                "response_format": "auto",
                "metadata": {},
            }
        )

    async def _threads_create(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        thread = Thread(metadata=metadata(body))
        thread.messages = _messages(thread.id, body.get("messages"))
        self.emulator.threads[thread.id] = thread
        return web.json_response(thread.to_dict())

    async def _threads_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._thread(request).to_dict())

    async def _threads_delete(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        for run in thread.runs:
            if run.active:
                run.cancel_requested.set()
            self.emulator.runs.pop(run.id, None)
        del self.emulator.threads[thread.id]
        return deleted("thread", thread.id)

    async def _messages_create(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        body = await read_json(request)
        if (active := thread.active_run) is not None:
            raise bad_request(
                f"Can't add messages to {thread.id} while a run {active.id} is active."
            )
        message = _message(thread.id, body)
        thread.messages.append(message)
        return web.json_response(message.to_dict())

    async def _messages_list(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        messages = thread.messages
        if run_id := request.query.get("run_id"):
            messages = [m for m in messages if m.run_id == run_id]
        return web.json_response(_page(messages, request))

    async def _messages_get(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        message_id = request.match_info["message_id"]
        for message in thread.messages:
            if message.id == message_id:
                return web.json_response(message.to_dict())
        raise not_found("message", message_id)

    async def _runs_create(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        thread_id = request.match_info["thread_id"]
        thread = self.emulator.threads.get(thread_id)
        extra = _messages(thread_id, body.get("additional_messages"))
        fallback = thread.last_user_text if thread is not None else ""
        config = self._run_config(last_user_text(extra, fallback), thread_id)
        if thread is None:
            raise not_found("thread", thread_id)
        return await self._start_run(request, thread, body, config, extra)

    async def _create_and_run(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        spec = body.get("thread") or {}
        if not isinstance(spec, dict):
            raise bad_request("Invalid type for 'thread': expected an object.")
        thread = Thread(metadata=metadata(spec))
        messages = _messages(thread.id, spec.get("messages"))
        config = self._run_config(last_user_text(messages), thread.id)
        return await self._start_run(request, thread, body, config, messages)

    def _run_config(self, user_text: str, thread_id: str) -> EmulatorConfig:
        config = self.emulator.reply_config(RUN_CREATE, user_text)
        check_http_fault(config, RUN_CREATE, ("thread", thread_id))
        return config

    async def _start_run(
        self,
        request: web.Request,
        thread: Thread,
        body: dict[str, Any],
        config: EmulatorConfig,
        new_messages: list[Message],
    ) -> web.StreamResponse:
        emulator = self.emulator
        assistant_id = body.get("assistant_id")
        if not assistant_id:
            raise bad_request("Missing required parameter: 'assistant_id'.")
        if assistant_id != emulator.agent_id:
            raise not_found("assistant", str(assistant_id))
        if (active := thread.active_run) is not None:
            raise ApiError(
                400,
                "thread_run_active",
                f"Thread {thread.id} already has an active run {active.id}.",
            )
        emulator.threads[thread.id] = thread
        thread.messages.extend(new_messages)
        instructions = body.get("instructions") or INSTRUCTIONS
        if extra_instructions := body.get("additional_instructions"):
            instructions = f"{instructions}\n{extra_instructions}"
        run = Run(
            thread_id=thread.id,
            assistant_id=assistant_id,
            model=body.get("model") or config.model,
            instructions=instructions,
            stream=bool(body.get("stream")),
            metadata=metadata(body),
            temperature=number(body.get("temperature"), 1.0),
            top_p=number(body.get("top_p"), 1.0),
        )
        thread.runs.append(run)
        emulator.runs[run.id] = run
        stream = RunStream(
            thread=thread,
            run=run,
            prompt_tokens=sum(len(m.text.split()) for m in thread.messages),
            config=config,
            tokens=reply_tokens(config, thread.last_user_text),
            gate=self.gate,
            deltas=emulator.deltas,
        )
        if not run.stream:
            created = run.to_dict()
            task = asyncio.create_task(stream.drive())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return web.json_response(created)
        # With an `incomplete` fault the run goes on after its body ends: the
        # client must not send its next request (a cancel, say) on this connection.
        response = await open_stream(request, close_after=config.fault == "incomplete")
        stream.attach(request, response)
        await stream.drive()
        if stream.sink is not None:
            await stream.sink.end()
        return response

    async def _runs_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(_page(self._thread(request).runs, request))

    async def _runs_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._run(request).to_dict())

    async def _runs_cancel(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request)
        if run.status not in ("queued", "in_progress", "requires_action"):
            raise bad_request(f"Cannot cancel run with status '{run.status}'.")
        run.status = "cancelling"
        run.cancel_requested.set()
        self.emulator.cancelled_runs.append(run.id)
        return web.json_response(run.to_dict())


def _page(items: list[Any], request: web.Request) -> dict[str, Any]:
    try:
        return list_page(items, request.query)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def _messages(thread_id: str, raw: Any) -> list[Message]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("Invalid type for 'messages': expected an array.")
    return [_message(thread_id, item) for item in raw]


def _message(thread_id: str, raw: Any) -> Message:
    if not isinstance(raw, dict):
        raise bad_request("Invalid message: expected an object.")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(f"Invalid value for 'role': {role!r}.")
    return Message(
        thread_id=thread_id,
        role=role,
        text=content_text(raw.get("content"), types=("text",)),
        metadata=metadata(raw),
    )
