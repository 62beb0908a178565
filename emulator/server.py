"""`AgentsEmulator`: one aiohttp application serving every protocol.

The classic Agents API (`agents`), the Responses API (`responses`), chat
completions (`chat_completions`) and the control API (`control`) share its config,
overrides, holds and recordings; its middleware records each request, applies the
HTTP faults aimed at it and turns errors into the service's error body.
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from .agents import AgentsApi
from .chat_completions import ChatCompletionsApi
from .config import (
    REPLY_OPERATIONS,
    EmulatorConfig,
    coerce_overrides,
    parse_directives,
    targets,
)
from .control import CONTROL_PREFIX, ControlApi
from .faults import check_http_fault
from .http import STREAMING, ApiError, Handler, bad_request
from .responses import ResponsesApi
from .store import ChatCompletion, Conversation, Response, Run, Thread
from .stream import HoldGate, RecordedDelta

logger = logging.getLogger("emulator")

DEFAULT_AGENT_ID = "asst_emulator"
DEFAULT_PROJECT = "emulator"
PREFIX = "/api/projects/{project}"
RECORDED_HEADERS = (
    "Authorization",
    "User-Agent",
    "Content-Type",
    "Accept",
    "x-ms-client-request-id",
)


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
        self.gate = HoldGate()
        self._agents_api = AgentsApi(self, self.gate)
        self._responses_api = ResponsesApi(self, self.gate)
        self._chat_completions_api = ChatCompletionsApi(self, self.gate)
        self._operations: dict[web.AbstractRoute, str] = {}
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
        await self._agents_api.wait_for_runs()
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

    @property
    def queued(self) -> int:
        """How many one-shot overrides wait for their request."""
        with self._overrides_lock:
            return len(self._overrides)

    def release(self) -> None:
        """Lets streams held by `hold_after` continue. Thread-safe."""
        if self._loop is None:
            raise RuntimeError("The emulator is not started.")
        self._loop.call_soon_threadsafe(self.gate.release)

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
        self.gate.reset()
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
        routes = self._agents_api.routes(PREFIX)
        routes += self._responses_api.routes(PREFIX + "/openai/v1")
        routes += self._chat_completions_api.routes()
        for method, path, handler, operation in routes:
            route = app.router.add_route(method, path, handler)
            self._operations[route] = operation
        for method, path, handler in ControlApi(self).routes():
            app.router.add_route(method, path, handler)
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
                thread_id = request.match_info.get("thread_id") or "thread_unknown"
                config = self._config_for(operation)
                check_http_fault(config, operation, ("thread", thread_id))
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


def _aimed(overrides: dict[str, Any]) -> dict[str, Any]:
    """A fault pushed or typed without an operation aims at the next reply.

    Otherwise it would inherit the defaults' `fault_operation` and could miss.
    """
    if "fault" in overrides:
        overrides.setdefault("fault_operation", None)
    return overrides
