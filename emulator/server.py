"""The aiohttp application: the Agents REST routes, fault injection, control API.

The OpenAI-protocol APIs (`responses`, `chat_completions`) are served by the same
application, with the same config, faults, holds and recordings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from .chat_completions import ChatCompletion, ChatCompletionsApi
from .config import (
    HTTP_FAULTS,
    REPLY_OPERATIONS,
    RUN_CREATE,
    EmulatorConfig,
    coerce_overrides,
    parse_directives,
    targets,
)
from .faults import ApiError, bad_request, http_fault, not_found
from .responses import Conversation, Response, ResponsesApi
from .store import Message, Run, Thread, list_page, now
from .stream import HoldGate, RecordedDelta, RunDriver, SseSink, reply_tokens

logger = logging.getLogger("chat.emulator")

DEFAULT_AGENT_ID = "asst_emulator"
DEFAULT_PROJECT = "emulator"
INSTRUCTIONS = "You are a helpful assistant."
PREFIX = "/api/projects/{project}"
CONTROL_PREFIX = "/_emulator/"
RECORDED_HEADERS = (
    "Authorization",
    "User-Agent",
    "Content-Type",
    "Accept",
    "x-ms-client-request-id",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set once a stream's headers are sent: an error can no longer become a reply.
STREAMING = web.RequestKey("emulator_streaming", bool)


@dataclass
class RecordedRequest:
    """One API request as received; `status` is filled in once answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    time: float
    operation: str | None
    status: int | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AgentsEmulator:
    """An in-memory Azure AI Foundry Agents service (classic threads/runs API).

    Start it on the running event loop; everything but `push()` and `release()`
    must be called from that loop (EmulatorThread wraps it for other threads).
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        agent_id: str = DEFAULT_AGENT_ID,
        project: str = DEFAULT_PROJECT,
    ) -> None:
        self._initial_config = config or EmulatorConfig()
        self.config = dataclasses.replace(self._initial_config)
        self.agent_id = agent_id
        self.project = project
        self.requests: list[RecordedRequest] = []
        self.deltas: list[RecordedDelta] = []
        self.cancelled_runs: list[str] = []
        self.threads: dict[str, Thread] = {}
        self.runs: dict[str, Run] = {}
        self.conversations: dict[str, Conversation] = {}
        self.responses: dict[str, Response] = {}
        self.chat_completions: dict[str, ChatCompletion] = {}
        self._overrides: list[dict[str, Any]] = []
        self._overrides_lock = threading.Lock()
        self._gate = HoldGate()
        self._responses_api = ResponsesApi(self, self._gate)
        self._chat_completions_api = ChatCompletionsApi(self, self._gate)
        self._tasks: set[asyncio.Task[None]] = set()
        self._operations: dict[web.AbstractRoute, str] = {}
        self._created_at = now()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"Refusing to serve the emulator on non-loopback host {host!r}."
            )
        self._loop = asyncio.get_running_loop()
        # The API has no auth: keep shutdown short so a hung stream cannot stall it.
        self._runner = web.AppRunner(
            self._build_app(), access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._host = host
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._cancel_active_runs()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The emulator is not started.")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The project endpoint to give the SDK (AZURE_AI_PROJECT_ENDPOINT)."""
        return f"{self.base_url}/api/projects/{self.project}"

    # -- in-process control --------------------------------------------------

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Changes the defaults used by every later request."""
        self.config = self.config.with_overrides(changes)
        return self.config

    def push(self, **overrides: Any) -> None:
        """Queues a one-shot override for the next matching request (FIFO).

        It targets the next reply (run, response or chat completion) unless
        `fault_operation` names another operation. Thread-safe.
        """
        coerced = _aimed(coerce_overrides(overrides))
        self.config.with_overrides(coerced)  # fail now, not at request time
        with self._overrides_lock:
            self._overrides.append(coerced)

    def release(self) -> None:
        """Lets streams held by `hold_after` continue. Thread-safe."""
        if self._loop is None:
            raise RuntimeError("The emulator is not started.")
        self._loop.call_soon_threadsafe(self._gate.release)

    def reset(self) -> None:
        """Forgets all state, recordings and overrides; restores the start config."""
        self._cancel_active_runs()
        self.threads.clear()
        self.runs.clear()
        self.conversations.clear()
        self.responses.clear()
        self.chat_completions.clear()
        self.requests.clear()
        self.deltas.clear()
        self.cancelled_runs.clear()
        with self._overrides_lock:
            self._overrides.clear()
        self._gate.reset()
        self.config = dataclasses.replace(self._initial_config)

    def _cancel_active_runs(self) -> None:
        for reply in itertools.chain(
            self.runs.values(), self.responses.values(), self.chat_completions.values()
        ):
            if reply.active:
                reply.cancel_requested.set()

    # -- app -----------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        thread = "/threads/{thread_id}"
        run = thread + "/runs/{run_id}"
        api: list[tuple[str, str, Handler, str]] = [
            ("GET", "/assistants/{agent_id}", self._agents_get, "agents.get"),
            ("POST", "/threads", self._threads_create, "threads.create"),
            # Before the {thread_id} routes, as on the service.
            ("POST", "/threads/runs", self._threads_create_and_run, RUN_CREATE),
            ("GET", thread, self._threads_get, "threads.get"),
            ("DELETE", thread, self._threads_delete, "threads.delete"),
            ("POST", thread + "/messages", self._messages_create, "messages.create"),
            ("GET", thread + "/messages", self._messages_list, "messages.list"),
            (
                "GET",
                thread + "/messages/{message_id}",
                self._messages_get,
                "messages.get",
            ),
            ("POST", thread + "/runs", self._runs_create, RUN_CREATE),
            ("GET", thread + "/runs", self._runs_list, "runs.list"),
            ("GET", run, self._runs_get, "runs.get"),
            ("POST", run + "/cancel", self._runs_cancel, "runs.cancel"),
        ]
        routes = [(m, PREFIX + path, h, op) for m, path, h, op in api]
        routes += self._responses_api.routes(PREFIX + "/openai/v1")
        routes += self._chat_completions_api.routes()
        for method, path, handler, operation in routes:
            route = app.router.add_route(method, path, handler)
            self._operations[route] = operation
        control: list[tuple[str, str, Handler]] = [
            ("GET", "health", self._control_health),
            ("GET", "config", self._control_config),
            ("POST", "config", self._control_config),
            ("POST", "push", self._control_push),
            ("POST", "release", self._control_release),
            ("GET", "requests", self._control_requests),
            ("GET", "deltas", self._control_deltas),
            ("GET", "cancelled", self._control_cancelled),
            ("POST", "reset", self._control_reset),
        ]
        for method, name, handler in control:
            app.router.add_route(method, CONTROL_PREFIX + name, handler)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        operation = self._operations.get(request.match_info.route)
        record = None
        if not request.path.startswith(CONTROL_PREFIX):
            record = await self._record(request, operation)
        try:
            if operation is not None and operation not in REPLY_OPERATIONS:
                thread_id = request.match_info.get("thread_id")
                self._check_http_fault(
                    self._config_for(operation), operation, thread_id
                )
            response = await handler(request)
        except ApiError as error:
            response = error.to_response()
        except web.HTTPException as exc:
            code = "not_found" if exc.status == 404 else "invalid_request_error"
            response = ApiError(exc.status, code, exc.reason).to_response()
        except Exception as exc:
            if request.get(STREAMING):
                raise  # headers are gone: nothing better to send
            logger.exception("Emulator error on %s %s", request.method, request.path)
            response = ApiError(
                500,
                "emulator_error",
                f"Emulator error: {exc!r}",
                error_type="server_error",
            ).to_response()
        if record is not None:
            record.status = response.status
            logger.info("%s %s -> %s", request.method, request.path, response.status)
        return response

    async def _record(
        self, request: web.Request, operation: str | None
    ) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query.items()),
            body=body,
            headers={
                h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers
            },
            time=time.time(),
            operation=operation,
        )
        self.requests.append(record)
        return record

    def reply_config(self, operation: str, user_text: str) -> EmulatorConfig:
        """The config of a call that starts a reply: the defaults, the next
        override aimed at it, then the directives in the user's message."""
        try:
            directives = parse_directives(user_text)
        except ValueError as exc:
            raise bad_request(str(exc), "invalid_emulator_directive") from exc
        return self._config_for(operation, _aimed(directives))

    def _config_for(
        self, operation: str, directives: Mapping[str, Any] | None = None
    ) -> EmulatorConfig:
        config = self.config
        override = self._pop_override(operation)
        try:
            if override is not None:
                config = config.with_overrides(override)
            if directives:
                config = config.with_overrides(directives)
        except ValueError as exc:
            raise bad_request(str(exc), "invalid_emulator_directive") from exc
        return config

    def _pop_override(self, operation: str) -> dict[str, Any] | None:
        with self._overrides_lock:
            for index, override in enumerate(self._overrides):
                if targets(override.get("fault_operation"), operation):
                    return self._overrides.pop(index)
        return None

    @staticmethod
    def _check_http_fault(
        config: EmulatorConfig, operation: str, thread_id: str | None
    ) -> None:
        if config.fault in HTTP_FAULTS and config.aims_at(operation):
            raise http_fault(
                config.fault, thread_id=thread_id, retry_after=config.retry_after
            )

    # -- lookups -------------------------------------------------------------

    def _thread(self, request: web.Request) -> Thread:
        thread_id = request.match_info["thread_id"]
        thread = self.threads.get(thread_id)
        if thread is None:
            raise not_found("thread", thread_id)
        return thread

    def _run(self, request: web.Request) -> Run:
        thread = self._thread(request)
        run_id = request.match_info["run_id"]
        run = self.runs.get(run_id)
        if run is None or run.thread_id != thread.id:
            raise not_found("run", run_id)
        return run

    # -- agents and threads --------------------------------------------------

    async def _agents_get(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        if agent_id != self.agent_id:
            raise not_found("assistant", agent_id)
        return web.json_response(
            {
                "id": self.agent_id,
                "object": "assistant",
                "created_at": self._created_at,
                "name": self.config.agent_name,
                "description": None,
                "model": self.config.model,
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
        body = await _json_body(request)
        thread = Thread(metadata=_metadata(body))
        thread.messages = _parse_messages(thread.id, body.get("messages"))
        self.threads[thread.id] = thread
        return web.json_response(thread.to_dict())

    async def _threads_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._thread(request).to_dict())

    async def _threads_delete(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        for run in thread.runs:
            if run.active:
                run.cancel_requested.set()
            self.runs.pop(run.id, None)
        del self.threads[thread.id]
        return web.json_response(
            {"id": thread.id, "object": "thread.deleted", "deleted": True}
        )

    # -- messages ------------------------------------------------------------

    async def _messages_create(self, request: web.Request) -> web.StreamResponse:
        thread = self._thread(request)
        body = await _json_body(request)
        if (active := thread.active_run) is not None:
            raise bad_request(
                f"Can't add messages to {thread.id} while a run {active.id} is active."
            )
        message = _parse_message(thread.id, body)
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

    # -- runs ----------------------------------------------------------------

    async def _runs_create(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        thread_id = request.match_info["thread_id"]
        thread = self.threads.get(thread_id)
        extra = _parse_messages(thread_id, body.get("additional_messages"))
        fallback = thread.last_user_text if thread is not None else ""
        config = self._run_config(_last_user_text(extra, fallback), thread_id)
        if thread is None:
            raise not_found("thread", thread_id)
        return await self._start_run(request, thread, body, config, extra)

    async def _threads_create_and_run(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        spec = body.get("thread") or {}
        if not isinstance(spec, dict):
            raise bad_request("Invalid type for 'thread': expected an object.")
        thread = Thread(metadata=_metadata(spec))
        messages = _parse_messages(thread.id, spec.get("messages"))
        config = self._run_config(_last_user_text(messages, ""), thread.id)
        return await self._start_run(request, thread, body, config, messages)

    def _run_config(self, user_text: str, thread_id: str) -> EmulatorConfig:
        config = self.reply_config(RUN_CREATE, user_text)
        self._check_http_fault(config, RUN_CREATE, thread_id)
        return config

    async def _start_run(
        self,
        request: web.Request,
        thread: Thread,
        body: dict[str, Any],
        config: EmulatorConfig,
        new_messages: list[Message],
    ) -> web.StreamResponse:
        assistant_id = body.get("assistant_id")
        if not assistant_id:
            raise bad_request("Missing required parameter: 'assistant_id'.")
        if assistant_id != self.agent_id:
            raise not_found("assistant", str(assistant_id))
        if (active := thread.active_run) is not None:
            raise ApiError(
                400,
                "thread_run_active",
                f"Thread {thread.id} already has an active run {active.id}.",
            )
        self.threads[thread.id] = thread
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
            metadata=_metadata(body),
            temperature=_number(body.get("temperature"), 1.0),
            top_p=_number(body.get("top_p"), 1.0),
        )
        thread.runs.append(run)
        self.runs[run.id] = run
        driver = RunDriver(
            thread=thread,
            run=run,
            config=config,
            tokens=reply_tokens(config, thread.last_user_text),
            prompt_tokens=sum(len(m.text.split()) for m in thread.messages),
            gate=self._gate,
            sink=None,
        )
        if not run.stream:
            created = run.to_dict()
            task = asyncio.create_task(driver.drive())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return web.json_response(created)

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        response.enable_chunked_encoding()
        if config.fault == "incomplete":
            # The run goes on in this handler after the body ends early; the client
            # must not send its next request (a cancel, say) on this connection,
            # where it would wait for the whole run.
            response.force_close()
        await response.prepare(request)
        request[STREAMING] = True
        driver.sink = SseSink(request, response, run, self.deltas.append)
        await driver.drive()
        await driver.sink.end()
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
        self.cancelled_runs.append(run.id)
        return web.json_response(run.to_dict())

    # -- control API -----------------------------------------------------------

    async def _control_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"status": "ok", "endpoint": self.endpoint, "agent_id": self.agent_id}
        )

    async def _control_config(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            try:
                self.configure(**await _json_body(request))
            except ValueError as exc:
                raise bad_request(str(exc), "invalid_emulator_config") from exc
        return web.json_response(self.config.to_dict())

    async def _control_push(self, request: web.Request) -> web.StreamResponse:
        try:
            self.push(**await _json_body(request))
        except ValueError as exc:
            raise bad_request(str(exc), "invalid_emulator_config") from exc
        with self._overrides_lock:
            queued = len(self._overrides)
        return web.json_response({"queued": queued})

    async def _control_release(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"released": self._gate.release()})

    async def _control_requests(self, request: web.Request) -> web.StreamResponse:
        records = [dataclasses.asdict(r) for r in self.requests]
        return web.json_response({"requests": records})

    async def _control_deltas(self, request: web.Request) -> web.StreamResponse:
        records = [dataclasses.asdict(d) for d in self.deltas]
        return web.json_response({"deltas": records})

    async def _control_cancelled(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"cancelled_runs": self.cancelled_runs})

    async def _control_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response({"reset": True})


async def _json_body(request: web.Request) -> dict[str, Any]:
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


def _aimed(overrides: dict[str, Any]) -> dict[str, Any]:
    """A fault pushed or typed without an operation aims at the next reply.

    Otherwise it would inherit the defaults' `fault_operation` and could miss.
    """
    if "fault" in overrides:
        overrides.setdefault("fault_operation", None)
    return overrides


def _number(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"Invalid number: {value!r}.")
    return float(value)


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise bad_request("Invalid type for 'metadata': expected an object.")
    return metadata


def _page(items: list[Any], request: web.Request) -> dict[str, Any]:
    try:
        return list_page(items, request.query)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def _parse_messages(thread_id: str, raw: Any) -> list[Message]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("Invalid type for 'messages': expected an array.")
    return [_parse_message(thread_id, item) for item in raw]


def _parse_message(thread_id: str, raw: Any) -> Message:
    if not isinstance(raw, dict):
        raise bad_request("Invalid message: expected an object.")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(f"Invalid value for 'role': {role!r}.")
    return Message(
        thread_id=thread_id,
        role=role,
        text=_content_text(raw.get("content")),
        metadata=_metadata(raw),
    )


def _content_text(content: Any) -> str:
    """Text of a message: a plain string or a list of `{"type": "text"}` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    raise bad_request("Invalid type for 'content': expected a string or an array.")


def _last_user_text(messages: list[Message], fallback: str) -> str:
    users = [m for m in messages if m.role == "user"]
    return users[-1].text if users else fallback
