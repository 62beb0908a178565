"""A classic run's life, from queued to its end, and its stream.

The stream is ``event: <name>`` / ``data: <json>`` frames in the order
azure-ai-agents parses: thread.run.created, thread.run.queued,
thread.run.in_progress, for each tool (`tools`) a tool_calls step
(thread.run.step.created, thread.run.step.in_progress, thread.run.step.delta
naming the call, thread.run.step.completed), thread.run.step.created,
thread.message.created,
thread.message.in_progress, thread.message.delta per token,
thread.message.completed, thread.run.step.completed, thread.run.completed, then
``event: done`` / ``data: [DONE]``.

A run is a task of the emulator's own, as on the service: its stream only watches
it. A client that leaves, or stops reading while its socket stays open (a process
frozen, an SDK stream let go but not closed), ends or slows its own stream and
nothing else; whoever polls the run meanwhile sees it go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web

from .http import sse_frame
from .store import Message, Run, Thread, new_id, now
from .stream import (
    IMAGE_FILE_ID,
    INTERPRETER_CODE,
    INTERPRETER_LOGS,
    SEARCH_QUERY,
    SERVER_ERROR,
    FrameSink,
    PacedReply,
    Token,
    function_call,
)

logger = logging.getLogger("emulator")

# The OpenAI protocols' truncated replies; a classic run has no such ending.
TRUNCATION_FAULTS = frozenset({"max_tokens", "content_filter"})


# The emulator's tools as classic tool calls' types.
CLASSIC_TOOLS = {
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "web_search": "bing_grounding",
}


def _started_call(tool: str) -> dict[str, Any]:
    """A tool call's details in its first delta."""
    if tool == "code_interpreter":
        return {"input": "", "outputs": []}
    return {}


def _finished_call(tool: str) -> dict[str, Any]:
    """A tool call's details once its step completed."""
    match tool:
        case "code_interpreter":
            logs = {"type": "logs", "logs": INTERPRETER_LOGS}
            return {"input": INTERPRETER_CODE, "outputs": [logs]}
        case "web_search":
            query = SEARCH_QUERY.replace(" ", "+")
            return {
                "requesturl": f"https://api.bing.microsoft.com/v7.0/search?q={query}"
            }
        case _:
            ranking = {"ranker": "default_2024_08_21", "score_threshold": 0.0}
            return {"ranking_options": ranking, "results": []}


def _function_call(spec: str) -> dict[str, Any]:
    """A function call as a run asks for it, from `name` or `name {json}`."""
    name, arguments = function_call(spec)
    function = {"name": name, "arguments": arguments}
    return {"id": new_id("call"), "type": "function", "function": function}


def _step_delta(
    step_id: str, call: dict[str, Any] | list[dict[str, Any]]
) -> dict[str, Any]:
    calls = call if isinstance(call, list) else [call]
    details = {"type": "tool_calls", "tool_calls": calls}
    return {
        "id": step_id,
        "object": "thread.run.step.delta",
        "delta": {"step_details": details},
    }


class QueuedSink(FrameSink):
    """A FrameSink the run never waits for: its frames queue up and a task of the
    sink's own writes them, in order, until the stream ends, is cut, or finds its
    client gone."""

    def __init__(
        self, request: web.BaseRequest, response: web.StreamResponse, reply: PacedReply
    ) -> None:
        super().__init__(request, response, reply)
        self._steps: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    async def send(self, frame: str, delta: tuple[int, str] | None = None) -> None:
        self._steps.put_nowait(partial(super().send, frame, delta))

    async def end(self) -> None:
        self._steps.put_nowait(super().end)

    def cut(self) -> None:
        self._steps.put_nowait(self._cut)

    async def detached(self) -> None:
        """Waits until the stream is over for its client: the response may go."""
        await self._writer

    async def _cut(self) -> None:
        super().cut()

    async def _write(self) -> None:
        while self.attached:
            step = await self._steps.get()
            await step()


class RunStream(PacedReply):
    """Takes a run from queued to a terminal status, streaming once attached."""

    def __init__(
        self,
        *,
        thread: Thread,
        run: Run,
        prompt_tokens: int,
        new_thread: bool = False,
        **options: Any,
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
        # A run of POST /threads/runs streams its thread's creation first.
        self.new_thread = new_thread
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
        # (step id, call id, created_at) of each tool call, in order.
        self.tool_steps: list[tuple[str, str, int]] = []

    def attach(self, request: web.Request, response: web.StreamResponse) -> None:
        self.sink = QueuedSink(request, response, self)

    async def play(self) -> None:
        """Drives the run to its end, then ends its stream."""
        try:
            await self.drive()
        except Exception:
            logger.exception("Emulator run %s failed", self.run_id)
            if self.sink is not None:
                self.sink.cut()
        if self.sink is not None:
            await self.sink.end()

    async def followed(self) -> None:
        """Returns once the run's stream is over for its client."""
        if isinstance(self.sink, QueuedSink):
            await self.sink.detached()

    async def _opened(self) -> None:
        if self.new_thread:
            await self._emit("thread.created", self.thread.to_dict())

    async def _start(self) -> None:
        run = self.run
        await self._emit("thread.run.created", run.to_dict())
        await self._emit("thread.run.queued", run.to_dict())
        run.status, run.started_at = "in_progress", now()
        await self._emit("thread.run.in_progress", run.to_dict())

    async def _tool_started(self, index: int, tool: str) -> None:
        """A tool_calls step, created empty, its call named by its first delta
        (and the code streamed by a second), as the service streams them."""
        step_id, call_id = new_id("step"), new_id("call")
        self.tool_steps.append((step_id, call_id, now()))
        await self._emit(
            "thread.run.step.created", self._tool_step(index, "in_progress")
        )
        await self._emit(
            "thread.run.step.in_progress", self._tool_step(index, "in_progress")
        )
        kind = CLASSIC_TOOLS[tool]
        first = {"index": 0, "id": call_id, "type": kind, kind: _started_call(tool)}
        await self._emit("thread.run.step.delta", _step_delta(step_id, first))
        if tool == "code_interpreter":
            code = {"index": 0, "type": kind, kind: {"input": INTERPRETER_CODE}}
            await self._emit("thread.run.step.delta", _step_delta(step_id, code))

    async def _tool_done(self, index: int, tool: str) -> None:
        step = self._tool_step(index, "completed", tool=tool, completed_at=now())
        await self._emit("thread.run.step.completed", step)

    async def _call_functions(self) -> bool:
        """A tool_calls step naming the calls, thread.run.requires_action and the
        end of this stream; the run then waits for submit_tool_outputs, whose
        stream goes on with the step's completion and the reply."""
        run = self.run
        calls = [_function_call(spec) for spec in self.config.function_calls]
        self.tool_steps.append((new_id("step"), "", now()))
        index = len(self.tool_steps) - 1
        step = self._tool_step(index, "in_progress")
        await self._emit("thread.run.step.created", step)
        listed = [
            {"index": i, **call, "function": {**call["function"], "output": None}}
            for i, call in enumerate(calls)
        ]
        await self._emit("thread.run.step.delta", _step_delta(step["id"], listed))
        run.status = "requires_action"
        run.required_action = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {"tool_calls": calls},
        }
        await self._emit("thread.run.requires_action", run.to_dict())
        await self._send(sse_frame("[DONE]", "done"))
        if self.sink is not None:
            await self.sink.end()
        if await self._wait_for_outputs():
            await self._cancelled()
            return True
        outputs = run.tool_outputs or {}
        run.status, run.required_action = "in_progress", None
        done = [
            {**call, "function": {**call["function"], "output": outputs[call["id"]]}}
            for call in calls
        ]
        step |= {"status": "completed", "completed_at": now()}
        step["step_details"] = {"type": "tool_calls", "tool_calls": done}
        await self._emit("thread.run.step.completed", step)
        return False

    async def _wait_for_outputs(self) -> bool:
        """True if the run was cancelled before its outputs came."""
        given = asyncio.ensure_future(self.run.outputs_given.wait())
        cancelled = asyncio.ensure_future(self.cancel_requested.wait())
        try:
            await asyncio.wait({given, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            given.cancel()
            cancelled.cancel()
        return self.cancel_requested.is_set()

    async def _open_message(self) -> None:
        self.thread.messages.append(self.message)
        await self._emit("thread.run.step.created", self._step("in_progress"))
        await self._emit("thread.message.created", self.message.to_dict())
        await self._emit("thread.message.in_progress", self.message.to_dict())
        if self.config.image:
            self.message.image_file_id = IMAGE_FILE_ID
            image = {"index": 0, "type": "image_file"}
            image["image_file"] = {"file_id": IMAGE_FILE_ID}
            delta = {"content": [image]}
            data = {"id": self.message.id, "object": "thread.message.delta"}
            await self._emit("thread.message.delta", data | {"delta": delta})

    async def _delta(self, index: int, token: Token) -> None:
        self.message.text += token.text
        for annotation in token.annotations:
            self.message.annotations.append(
                {key: value for key, value in annotation.items() if key != "index"}
            )
        text: dict[str, Any] = {"value": token.text}
        if token.annotations:
            text["annotations"] = list(token.annotations)
        part = 1 if self.message.image_file_id else 0
        delta = {"content": [{"index": part, "type": "text", "text": text}]}
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
        run.required_action = None
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

    def _tool_step(
        self, index: int, status: str, *, tool: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        step_id, call_id, created_at = self.tool_steps[index]
        calls = []
        if tool is not None:
            kind = CLASSIC_TOOLS[tool]
            calls = [{"id": call_id, "type": kind, kind: _finished_call(tool)}]
        details = {"type": "tool_calls", "tool_calls": calls}
        step = self._step(status, **changes)
        return step | {
            "id": step_id,
            "created_at": created_at,
            "type": "tool_calls",
            "step_details": details,
        }

    async def _emit(
        self, event: str, data: dict[str, Any], delta: tuple[int, str] | None = None
    ) -> None:
        await self._send(sse_frame(data, event), delta)
