"""The classic Agents REST API: assistants, threads, messages and runs.

Every run is driven in the background (see `runs`), streamed or not: the stream
of a run created with ``"stream": true`` follows it while its client stays, and
``GET`` on the run and on its messages shows it at any time.
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
)
from .runs import RunStream
from .store import Message, Run, Thread, last_user_text, list_page, now
from .stream import IMAGE_FILE_ID, IMAGE_PNG, HoldGate, reply_tokens

if TYPE_CHECKING:
    from .server import AgentsEmulator

INSTRUCTIONS = "You are a helpful assistant."


class AgentsApi:
    """Assistants, threads, messages and runs, stored on the emulator."""

    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate
        self.created_at = now()
        self._tasks: set[asyncio.Task[None]] = set()
        # The runs being driven, by id: submit_tool_outputs streams them on.
        self._streams: dict[str, RunStream] = {}

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
            (
                "POST",
                run + "/submit_tool_outputs",
                self._runs_submit_tool_outputs,
                "runs.submit_tool_outputs",
            ),
            (
                "GET",
                prefix + "/files/{file_id}/content",
                self._files_content,
                "files.content",
            ),
        ]

    async def _files_content(self, request: web.Request) -> web.StreamResponse:
        """The bytes of a code interpreter's file, as an octet-stream."""
        file_id = request.match_info["file_id"]
        if file_id != IMAGE_FILE_ID:
            raise not_found("file", file_id)
        return web.Response(body=IMAGE_PNG, content_type="application/octet-stream")

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
        return await self._start_run(
            request, thread, body, config, messages, new_thread=True
        )

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
        *,
        new_thread: bool = False,
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
            new_thread=new_thread,
        )
        self._streams[run.id] = stream
        if not run.stream:
            created = run.to_dict()
            self._play(stream)
            return web.json_response(created)
        # With an `incomplete` fault the run goes on after its body ends: the
        # client must not send its next request (a cancel, say) on this connection.
        response = await open_stream(request, close_after=config.fault == "incomplete")
        stream.attach(request, response)
        self._play(stream)
        await stream.followed()
        return response

    def _play(self, stream: RunStream) -> None:
        task = asyncio.create_task(stream.play())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._streams.pop(stream.run_id, None))

    async def _runs_submit_tool_outputs(
        self, request: web.Request
    ) -> web.StreamResponse:
        run = self._run(request)
        body = await read_json(request)
        stream = self._streams.get(run.id)
        if run.status != "requires_action" or run.required_action is None or not stream:
            raise bad_request(
                f"Runs in status '{run.status}' do not accept tool outputs."
            )
        given = _tool_outputs(body.get("tool_outputs"))
        calls = run.required_action["submit_tool_outputs"]["tool_calls"]
        wanted = {call["id"] for call in calls}
        if set(given) != wanted:
            raise bad_request(
                f"Expected tool outputs for {sorted(wanted)}, got {sorted(given)}."
            )
        run.tool_outputs = given
        if not body.get("stream"):
            run.outputs_given.set()
            return web.json_response(run.to_dict())
        response = await open_stream(request)
        stream.attach(request, response)
        run.outputs_given.set()
        await stream.followed()
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


def _tool_outputs(raw: Any) -> dict[str, str]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("Invalid 'tool_outputs': expected a non-empty array.")
    outputs = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
            raise bad_request("Each tool output needs a 'tool_call_id'.")
        output = item.get("output", "")
        if not isinstance(output, str):
            raise bad_request("Invalid 'output': expected a string.")
        outputs[item["tool_call_id"]] = output
    return outputs


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
