"""EmulatorThread: the emulator on its own loop, for sync tests and subprocess apps;
LoopThread, what it shares with other servers run that way."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Self, TypeVar

from .config import EmulatorConfig
from .server import DEFAULT_AGENT_ID, AgentsEmulator, RecordedRequest
from .store import Thread
from .stream import RecordedDelta

T = TypeVar("T")

START_TIMEOUT_SECONDS = 10.0


class LoopThread:
    """Serves something from its own event loop in a daemon thread: `start` (or
    `with`) returns once `_open` has run on that loop, `stop` runs `_close` there
    and joins the thread."""

    thread_name = "loop-thread"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve(started),),
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        started.result(timeout=START_TIMEOUT_SECONDS)
        return self

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._open()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            await self._close()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT_SECONDS)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmulatorThread(LoopThread):
    """Runs an AgentsEmulator in a daemon thread; same attributes, thread-safe.

    with EmulatorThread(config=EmulatorConfig(token_interval=0.01)) as emu:
        settings.AZURE_AI_PROJECT_ENDPOINT = emu.endpoint
    """

    thread_name = "agents-emulator"

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        agent_id: str = DEFAULT_AGENT_ID,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__()
        self.emulator = AgentsEmulator(config, agent_id=agent_id)
        self._host = host
        self._port = port

    async def _open(self) -> None:
        await self.emulator.start(self._host, self._port)

    async def _close(self) -> None:
        await self.emulator.stop()

    def _call(self, function: Callable[[], T]) -> T:
        """Runs `function` on the emulator's loop and returns its result."""
        if self._loop is None:
            raise RuntimeError("The emulator thread is not started.")

        async def call() -> T:
            return function()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(timeout=START_TIMEOUT_SECONDS)

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    @config.setter
    def config(self, config: EmulatorConfig) -> None:
        self.emulator.config = config

    @property
    def agent_id(self) -> str:
        return self.emulator.agent_id

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    @property
    def endpoint(self) -> str:
        return self.emulator.endpoint

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._call(lambda: list(self.emulator.requests))

    @property
    def deltas(self) -> list[RecordedDelta]:
        return self._call(lambda: list(self.emulator.deltas))

    @property
    def cancelled_runs(self) -> list[str]:
        return self._call(lambda: list(self.emulator.cancelled_runs))

    @property
    def threads(self) -> dict[str, Thread]:
        return self._call(lambda: dict(self.emulator.threads))

    def configure(self, **changes: Any) -> EmulatorConfig:
        return self._call(lambda: self.emulator.configure(**changes))

    def push(self, **overrides: Any) -> None:
        self.emulator.push(**overrides)

    def release(self) -> None:
        self.emulator.release()

    def reset(self) -> None:
        self._call(self.emulator.reset)
